//! The VOS web server's request parser (unikernel-vos/src/services/http/parse.rs), built for the
//! host: hostile bytes never panic, the chunked decoder gives back exactly what was encoded
//! however the input is split and however little the sink takes, and the path checks refuse
//! every traversal.

extern crate alloc;

#[allow(dead_code)]
#[path = "../../unikernel-vos/src/services/http/parse.rs"]
mod parse;

use parse::{check_target, parse_head, range, BodyLen, Chunked, Method, RangeSel, Status};
use proptest::prelude::*;

/// Feeds `input` in pieces of `splits` sizes to a decoder whose sink takes at most `take`
/// bytes per call; the decoded bytes, the bytes consumed, or the error.
fn decode(input: &[u8], splits: &[usize], take: usize) -> Result<(Vec<u8>, usize), &'static str> {
    let mut d = Chunked::default();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut k = 0;
    while pos < input.len() && !d.done() {
        let len = splits
            .get(k % splits.len().max(1))
            .copied()
            .unwrap_or(7)
            .max(1);
        k += 1;
        let end = (pos + len).min(input.len());
        let mut piece = &input[pos..end];
        while !piece.is_empty() && !d.done() {
            let n = d.feed(piece, &mut |b: &[u8]| {
                let n = b.len().min(take);
                out.extend_from_slice(&b[..n]);
                n
            })?;
            if n == 0 {
                break;
            }
            pos += n;
            piece = &piece[n..];
        }
        if k > input.len() * 4 + 16 {
            break;
        }
    }
    Ok((out, pos))
}

fn encode(data: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut off = 0;
    let mut k = 0;
    while off < data.len() {
        let n = sizes
            .get(k % sizes.len().max(1))
            .copied()
            .unwrap_or(5)
            .max(1)
            .min(data.len() - off);
        k += 1;
        out.extend_from_slice(format!("{n:X};x=y\r\n").as_bytes());
        out.extend_from_slice(&data[off..off + n]);
        out.extend_from_slice(b"\r\n");
        off += n;
    }
    out.extend_from_slice(b"0\r\nTrailer: t\r\n\r\n");
    out
}

#[test]
fn chunked_examples() {
    let (out, used) = decode(b"5\r\nhello\r\n0\r\n\r\nNEXT", &[100], 100).unwrap();
    assert_eq!((&out[..], used), (&b"hello"[..], 15));
    for bad in [
        &b"zz\r\n"[..],
        b"\r\n",
        b"5\r\nhelloX\r\n",
        b"5\nhello\r\n",
        b"1000000000000000\r\n",
        b"0\r\nbad\n",
    ] {
        assert!(
            decode(bad, &[100], 100).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let mut long_ext = b"1;".to_vec();
    long_ext.resize(300, b'a');
    assert!(decode(&long_ext, &[1000], 10).is_err());
}

#[test]
fn targets() {
    for ok in ["/", "/a", "/a/b.txt", "/dir/", "/a%41", "/x?q=1&r=../.."] {
        assert!(check_target(ok).is_ok(), "{ok}");
    }
    for bad in [
        "/..",
        "/../etc/passwd",
        "/a/../b",
        "/%2e%2e/x",
        "/%2E%2E",
        "/a/%2e",
        "/./a",
        "/a%2fb",
        "/a%2Fb",
        "/a%5cb",
        "/a\\b",
        "//a",
        "/a//b",
        "a",
        "*",
        "http://h/p",
        "/%",
        "/%4",
        "/%zz",
        "/a#f",
        "/%00",
        "/a b",
        "/\u{e9}",
        "/a%c3%a9",
    ] {
        let r = check_target(bad);
        assert!(
            matches!(r, Err(e) if e.status == Status::BadRequest),
            "{bad}: {r:?}"
        );
    }
}

#[test]
fn heads() {
    let r = parse_head(
        b"PUT /f HTTP/1.0\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n",
    )
    .unwrap();
    assert_eq!(
        (r.method, r.body, r.keep_alive, r.http10),
        (Method::Put, BodyLen::Chunked, true, true)
    );
    let r = parse_head(b"GET /f HTTP/1.1\r\nContent-Length: 0\r\nConnection: x, close\r\n\r\n")
        .unwrap();
    assert_eq!((r.body, r.keep_alive), (BodyLen::None, false));
    for (head, want) in [
        (
            &b"GET /f HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            Status::BadRequest,
        ),
        (
            b"GET /f HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            Status::BadRequest,
        ),
        (
            b"GET /f HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            Status::BadRequest,
        ),
        (b"GET /f HTTP/1.1\r\nX\x01: y\r\n\r\n", Status::BadRequest),
        (b"GET /f HTTP/1.1\r\nX: y\x00\r\n\r\n", Status::BadRequest),
        (b"GET /f HTTP/1.1\r\n: y\r\n\r\n", Status::BadRequest),
        (
            b"GET /f HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            Status::BadRequest,
        ),
        (b"get /f HTTP/1.1\r\n\r\n", Status::NotImplemented),
        (b"DELETE /f HTTP/3.0\r\n\r\n", Status::VersionNotSupported),
        (b"GET /f HTTP/1.1\r\n\xff\r\n\r\n", Status::BadRequest),
    ] {
        let r = parse_head(head);
        assert!(
            matches!(r, Err(e) if e.status == want),
            "{:?}: {r:?}",
            String::from_utf8_lossy(head)
        );
    }
    let mut many = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..65 {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert!(matches!(parse_head(&many), Err(e) if e.status == Status::HeadTooLarge));
}

#[test]
fn ranges() {
    let r = |s: &str, n| range(Some(s), n);
    assert_eq!(r("bytes=0-9", 100), RangeSel::Part(0, 9));
    assert_eq!(r("bytes=90-", 100), RangeSel::Part(90, 99));
    assert_eq!(r("bytes=-10", 100), RangeSel::Part(90, 99));
    assert_eq!(r("bytes=-1000", 100), RangeSel::Part(0, 99));
    assert_eq!(r("bytes=50-5000", 100), RangeSel::Part(50, 99));
    assert_eq!(r("bytes=100-", 100), RangeSel::Unsatisfiable);
    assert_eq!(r("bytes=-0", 100), RangeSel::Unsatisfiable);
    assert_eq!(r("bytes=0-0", 0), RangeSel::Unsatisfiable);
    for ignored in [
        "bytes=9-1",
        "bytes=a-b",
        "items=0-1",
        "bytes=0-1,5-6",
        "bytes=-",
        "bytes=1",
    ] {
        assert_eq!(r(ignored, 100), RangeSel::Full, "{ignored}");
    }
    assert_eq!(range(None, 5), RangeSel::Full);
}

proptest! {
    #[test]
    fn hostile_heads_never_panic(b in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_head(&b);
        let _ = parse::head_end(&b, b.len() / 2);
    }

    #[test]
    fn hostile_text_heads_never_panic(s in "[A-Z]{0,8} [ -~]{0,40} HTTP/1\\.[01]\r\n([!-~]{0,10}:[ -~]{0,20}\r\n){0,5}\r\n") {
        let _ = parse_head(s.as_bytes());
    }

    #[test]
    fn hostile_targets_never_panic_and_accepted_ones_are_safe(s in "\\PC{0,80}") {
        if let Ok(p) = check_target(&s) {
            prop_assert!(p.starts_with('/'));
            prop_assert!(!p.split('/').any(|seg| seg == ".." || seg == "."));
            prop_assert!(!p.contains("//") && !p.contains('\\') && !p.contains('%'));
        }
    }

    #[test]
    fn hostile_ranges_never_panic(s in "bytes=[-0-9, ]{0,30}", size in 0u64..1_000_000) {
        match range(Some(&s), size) {
            RangeSel::Part(a, b) => prop_assert!(a <= b && b < size),
            RangeSel::Full | RangeSel::Unsatisfiable => {}
        }
    }

    #[test]
    fn hostile_chunked_never_panics(b in proptest::collection::vec(any::<u8>(), 0..400),
                                    splits in proptest::collection::vec(1usize..50, 1..5),
                                    take in 1usize..40) {
        let _ = decode(&b, &splits, take);
    }

    #[test]
    fn chunked_round_trips(data in proptest::collection::vec(any::<u8>(), 0..3000),
                           sizes in proptest::collection::vec(1usize..700, 1..6),
                           splits in proptest::collection::vec(1usize..300, 1..6),
                           take in 1usize..500) {
        let mut enc = encode(&data, &sizes);
        let body_len = enc.len();
        enc.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let (out, used) = decode(&enc, &splits, take).map_err(TestCaseError::fail)?;
        prop_assert_eq!(out, data);
        prop_assert_eq!(used, body_len);
    }
}
