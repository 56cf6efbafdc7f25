//! Every message of the Alces protocol (requests of every service, replies
//! the clients decode, changelog and snapshot records): the first byte picks
//! the message type, the rest is decoded as it. A message that decodes must
//! encode and decode again to itself.
#![no_main]

use prost::Message;

macro_rules! alces_messages {
    ($($name:ident),* $(,)?) => {
        const DECODERS: &[fn(&[u8])] = &[$(|b: &[u8]| {
            if let Ok(m) = alces_proto::pb::$name::decode(b) {
                let bytes = m.encode_to_vec();
                let again = alces_proto::pb::$name::decode(bytes.as_slice())
                    .expect(concat!("a re-encoded ", stringify!($name), " decodes"));
                // Compared encoded: a NaN double is not equal to itself.
                assert_eq!(
                    again.encode_to_vec(),
                    bytes,
                    concat!(stringify!($name), " does not round-trip")
                );
            }
        }),*];
    };
}

include!(concat!(env!("OUT_DIR"), "/messages.rs"));

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some((&pick, rest)) = data.split_first() {
        DECODERS[pick as usize % DECODERS.len()](rest);
    }
});
