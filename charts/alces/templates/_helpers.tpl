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

{{/* Namespace of the volumes' credential Secrets (alces-vol-<pv name>). */}}
{{- define "alces.volumeSecretNamespace" -}}
{{- .Values.csi.volumeCredentials.namespace | default .Release.Namespace -}}
{{- end -}}

{{/* CSI secret parameters for one operation prefix (provisioner, node-stage, ...). */}}
{{- define "alces.csiSecretParams" -}}
{{- $s := split "/" (include "alces.storageSecret" .root) -}}
{{- range .prefixes }}
csi.storage.k8s.io/{{ . }}-secret-name: {{ $s._1 | quote }}
csi.storage.k8s.io/{{ . }}-secret-namespace: {{ $s._0 | quote }}
{{- end }}
{{- end -}}

{{/* The TLS Secret of the chart's cluster and of the CSI pods (tls.secretName, else <cluster.name>-tls). */}}
{{- define "alces.tlsSecret" -}}
{{- default (printf "%s-tls" .Values.cluster.name) .Values.tls.secretName -}}
{{- end -}}

{{/* The Secret the CSI pods present as clients (tls.clientSecretName, else the TLS Secret). */}}
{{- define "alces.tlsClientSecret" -}}
{{- default (include "alces.tlsSecret" .) .Values.tls.clientSecretName -}}
{{- end -}}

{{/* Refuses TLS values that cannot work, naming the value. */}}
{{- define "alces.tlsCheck" -}}
{{- $t := .Values.tls -}}
{{- if and $t.enabled (not $t.secretName) (not $t.certManager.enabled) -}}
{{- fail "tls.secretName: name the Secret holding tls.crt, tls.key and ca.crt (make one with `alces tls generate`), or set tls.certManager.enabled=true to have cert-manager make it" -}}
{{- end -}}
{{- if and $t.certManager.enabled (not $t.enabled) -}}
{{- fail "tls.certManager.enabled needs tls.enabled=true: the certificate is for TLS" -}}
{{- end -}}
{{- if and $t.certManager.enabled (not .Values.cluster.enabled) -}}
{{- fail "tls.certManager.enabled makes the certificate of the chart's AlcesCluster (cluster.enabled=false here); for another cluster, make its Certificate with the names README.md lists and give tls.secretName" -}}
{{- end -}}
{{- if and $t.certManager.enabled (not (.Capabilities.APIVersions.Has "cert-manager.io/v1")) -}}
{{- fail "tls.certManager.enabled: this cluster does not serve cert-manager.io/v1; install cert-manager first, or leave it off and make the Secret with `alces tls generate`" -}}
{{- end -}}
{{- end -}}

{{/* ALCES_TLS_* of the CSI containers (clients of every cluster they serve). */}}
{{- define "alces.tlsEnv" -}}
{{- if .Values.tls.enabled }}
- name: ALCES_TLS_CA
  value: /etc/alces/tls/ca.crt
- name: ALCES_TLS_CERT
  value: /etc/alces/tls/tls.crt
- name: ALCES_TLS_KEY
  value: /etc/alces/tls/tls.key
{{- with .Values.tls.serverName }}
- name: ALCES_TLS_SERVER_NAME
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The CSI containers' TLS mount (a directory, so renewals reach the files). */}}
{{- define "alces.tlsMount" -}}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/alces/tls
  readOnly: true
{{- end }}
{{- end -}}

{{/* The CSI pods' TLS volume: keys 0400 (0440 with the pod's fsGroup, the group-readable mode the binaries accept for a key). */}}
{{- define "alces.tlsVolume" -}}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "alces.tlsClientSecret" . }}
    defaultMode: 0400
{{- end }}
{{- end -}}
