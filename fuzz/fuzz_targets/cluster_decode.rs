//! A message from the cluster bus (Redis pub/sub): decode never panics, and what decodes
//! encodes back to something that decodes to the same message.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let bytes = bytes::Bytes::copy_from_slice(data);
    if let Ok(m) = street::cluster::ClusterMessage::decode(bytes) {
        let again = street::cluster::ClusterMessage::decode(m.encode()).expect("re-decode");
        assert_eq!(again, m);
    }
});
