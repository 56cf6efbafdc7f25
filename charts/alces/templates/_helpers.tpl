{{/* Names and labels shared by every template. */}}

{{/* The base name of the release's objects: <release>-alces, or the release name when it already says alces. At most 48 characters: Service names (DNS labels, 63) add up to 15 ("-csi-controller"). */}}
{{- define "alces.fullname" -}}
{{- if contains "alces" .Release.Name -}}
{{- .Release.Name | trunc 48 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-alces" .Release.Name | trunc 48 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object (Kubernetes' recommended app.kubernetes.io/* labels). */}}
{{- define "alces.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: alces
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: alces
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: call with (dict "root" $ "component" "operator"). */}}
{{- define "alces.selectorLabels" -}}
app.kubernetes.io/name: alces
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Labels of one component: the common ones and its selector labels. */}}
{{- define "alces.componentLabels" -}}
{{ include "alces.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The Alces image reference: repository with the digest, else the tag (default: appVersion). */}}
{{- define "alces.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The descriptor holder's image: csi.holder.image, each empty field taken from image. */}}
{{- define "alces.holderImage" -}}
{{- $i := .Values.csi.holder.image -}}
{{- $repo := default .Values.image.repository $i.repository -}}
{{- if $i.digest -}}
{{- printf "%s@%s" $repo $i.digest -}}
{{- else if $i.tag -}}
{{- printf "%s:%s" $repo $i.tag -}}
{{- else if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "alces.operator.serviceAccountName" -}}
{{- default (printf "%s-operator" (include "alces.fullname" .)) .Values.operator.serviceAccount.name -}}
{{- end -}}

{{/* The environment every Alces container gets: logging. */}}
{{- define "alces.logEnv" -}}
- name: ALCES_LOG_JSON
  value: {{ .Values.logJson | quote }}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
{{- end -}}

{{/* Security context of a container that needs no privilege at all. */}}
{{- define "alces.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* imagePullSecrets of every pod. */}}
{{- define "alces.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The AlcesCluster volumes come from: storageClass.cluster, else the chart's own. */}}
{{- define "alces.storageCluster" -}}
{{- default (printf "%s/%s" .Release.Namespace .Values.cluster.name) .Values.storageClass.cluster -}}
{{- end -}}

{{/* The Secret with the cluster's credentials as namespace/name. */}}
{{- define "alces.storageSecret" -}}
{{- if .Values.storageClass.secret -}}
{{- .Values.storageClass.secret -}}
{{- else -}}
{{- $c := split "/" (include "alces.storageCluster" .) -}}
{{- printf "%s/%s-secret" $c._0 $c._1 -}}
{{- end -}}
{{- end -}}

{{/* CSI secret parameters for one operation prefix (provisioner, node-stage, ...). */}}
{{- define "alces.csiSecretParams" -}}
{{- $s := split "/" (include "alces.storageSecret" .root) -}}
{{- range .prefixes }}
csi.storage.k8s.io/{{ . }}-secret-name: {{ $s._1 | quote }}
csi.storage.k8s.io/{{ . }}-secret-namespace: {{ $s._0 | quote }}
{{- end }}
{{- end -}}
