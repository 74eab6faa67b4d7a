//! The protocol's path check (what the http and fs servers run on client input) and the file
//! system's own accept exactly the same paths.

use proptest::prelude::*;

fn same(p: &str) -> Result<(), TestCaseError> {
    let fs = dvs_fs::path::components(p).is_ok();
    let proto = dvs_vos_proto::fs::validate_path(p.as_bytes()).is_ok();
    prop_assert_eq!(fs, proto, "{:?}", p);
    Ok(())
}

#[test]
fn limits_agree() {
    assert_eq!(dvs_fs::path::MAX_PATH, dvs_vos_proto::fs::MAX_PATH);
    assert_eq!(dvs_fs::path::MAX_NAME, dvs_vos_proto::fs::MAX_NAME);
    for p in [
        "/",
        "//",
        "/a/",
        "/..",
        "/a/./b",
        "/a\u{7f}",
        &format!("/{}", "x".repeat(255)),
        &format!("/{}", "x".repeat(256)),
    ] {
        same(p).unwrap();
    }
}

proptest! {
    #[test]
    fn random_paths_agree(p in "[/a.\\x00\\x7f\u{e9}]{0,12}") {
        same(&p)?;
    }

    #[test]
    fn long_paths_agree(n in 1000usize..1030, k in 1usize..300) {
        let name = "y".repeat(k);
        let mut p = String::new();
        while p.len() < n {
            p.push('/');
            p.push_str(&name);
        }
        same(&p)?;
    }
}
