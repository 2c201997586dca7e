//! Small hand-made inputs that reach deep into each target, written to the
//! corpora by `cargo run -p xenshare-fuzz-targets --example seed_corpora`.

use xenshare::store::wire::{Message, MsgType, Request};

fn xs_messages() -> Vec<Message> {
    let p = |s: &str| s.to_string();
    let reqs = [
        Request::Write {
            path: p("/local/domain/5/a"),
            value: b"v".to_vec(),
        },
        Request::Read(p("/local/domain/5/a")),
        Request::Directory(p("/local/domain/5")),
        Request::Watch {
            path: p("/local/domain/5"),
            token: b"t".to_vec(),
        },
        Request::TransactionStart,
        Request::Mkdir(p("data/x")),
        Request::GetPerms(p("/local/domain/5/a")),
        Request::SetPerms {
            path: p("/local/domain/5/a"),
            perms: xenshare::store::perms::Perms::owned_by(
                xenshare::DomId(5),
                xenshare::store::perms::PermKind::Read,
            ),
        },
        Request::Rm(p("/local/domain/5/a")),
        Request::DirectoryPart {
            path: p("/"),
            offset: 0,
        },
        Request::Unwatch {
            path: p("/local/domain/5"),
            token: b"t".to_vec(),
        },
        Request::IsDomainIntroduced(5),
        Request::GetDomainPath(xenshare::DomId(5)),
    ];
    let mut v: Vec<Message> = reqs
        .iter()
        .enumerate()
        .map(|(i, r)| r.to_message(i as u32 + 1, 0))
        .collect();
    v.push(Message::watch_event("/a", b"tok"));
    v.push(Message::new(
        MsgType::TransactionEnd,
        99,
        1,
        b"T\0".to_vec(),
    ));
    v
}

fn encoded(msgs: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        m.encode_into(&mut out).expect("seed encodes");
    }
    out
}

/// Seed inputs for `target`.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let msgs = xs_messages();
    match target {
        "xs_wire" => {
            let mut v: Vec<Vec<u8>> = msgs
                .iter()
                .map(|m| {
                    let mut s = vec![7u8];
                    s.extend(encoded(std::slice::from_ref(m)));
                    s
                })
                .collect();
            let mut all = vec![0u8];
            all.extend(encoded(&msgs));
            v.push(all);
            v
        }
        "xenstored" => [0u8, 1]
            .iter()
            .map(|&d| {
                let mut s = vec![d];
                s.extend(encoded(&msgs));
                s
            })
            .collect(),
        // side, size, start, then ops: 6 push, 7 publish, 0 peer prod, 3 slot, 8 consume
        "ring" => vec![
            vec![
                0, 5, 0, 6, 1, 2, 6, 3, 4, 7, 0, 0, 0, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 11,
            ],
            vec![
                1, 1, 1, 9, 0, 0, 3, 3, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 8, 6, 1, 2, 7, 1, 11, 10,
            ],
            vec![
                1, 4, 3, 0xff, 0xff, 0xff, 0xff, 0, 0, 40, 8, 6, 0, 0, 7, 0, 8, 0, 250, 1, 1, 1, 1,
                8,
            ],
        ],
        // mode (even: server), ops: 0 peer prod, 2 ring bytes, 4.. I/O
        "vchan" => vec![
            vec![
                0, 2, 0, 0, 0, 3, 1, 2, 3, 0, 0, 10, 4, 10, 0, 7, 16, 0, 0x87, 4, 0,
            ],
            vec![
                1, 0, 0, 0, 20, 2, 0, 0, 4, 9, 9, 9, 9, 4, 100, 0, 7, 50, 0, 1, 0, 30,
            ],
            vec![5, 1, 16, 12, 0, 0, 0, 7, 0, 1],
            vec![3, 1, 17, 13, 0, 0, 0, 4, 0, 0],
        ],
        "blkback" => {
            let mut v = Vec::new();
            for flags in [0x1fu8, 0x3f, 0x80] {
                let mut s = vec![flags];
                // READ of 2 segments, then WRITE, then INDIRECT with 3 segments.
                let mut rd = [0u8; 112];
                rd[0] = 0;
                rd[1] = 2;
                rd[16] = 8;
                rd[24..32].copy_from_slice(&[0, 0, 0, 0, 0, 7, 0, 0]);
                rd[32..40].copy_from_slice(&[1, 0, 0, 0, 2, 3, 0, 0]);
                s.extend(rd);
                let mut wr = rd;
                wr[0] = 1;
                s.extend(wr);
                let mut ind = [0u8; 112];
                ind[0] = 6;
                ind[1] = 1;
                ind[2] = 3;
                ind[16] = 16;
                s.extend(ind);
                s.extend([0, 0, 7, 1, 1, 1, 2, 0, 3]);
                v.push(s);
            }
            v
        }
        // flags, then: 0 tx request (g, f, offset, id, size), 3 publish, 6 poll
        "netback" => vec![
            vec![
                1, 0, 0, 0x40, 0, 0, 1, 0, 10, 3, 0, 6, 4, 1, 5, 0, 5, 1, 7, 6,
            ],
            vec![
                1, 0, 0, 0x41, 0, 0, 1, 0, 10, 0, 1, 0x40, 0, 1, 2, 0, 3, 3, 0, 6, 0, 2, 0x80, 0,
                0, 3, 0, 0, 0, 3, 0, 6,
            ],
            vec![0, 0, 3, 0xff, 0, 0, 1, 0, 10, 3, 0, 6],
        ],
        // flags, then: 0 response (pick, f, offset, status), 3 publish, 4 poll
        "netfront" => vec![
            vec![1, 0, 0, 0, 0, 0, 20, 0x40, 0, 3, 0, 4],
            vec![
                1, 0, 0, 1, 0, 0, 20, 0x40, 0, 0, 1, 0, 0, 0, 20, 0x10, 0, 3, 0, 4,
            ],
            vec![3, 0, 0, 0xe0, 0, 0, 20, 0, 0, 3, 0, 4, 3, 250, 0, 200, 4],
        ],
        // prod/cons indices, then ops: 4 produce, 6 consume, 1 peer prod, 0x80 | op: OUT
        "console" => vec![
            vec![0; 16]
                .into_iter()
                .chain([4, 10, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 0, 6, 6, 0])
                .collect(),
            vec![
                0xf0, 0xff, 0xff, 0xff, 0xf0, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0,
            ]
            .into_iter()
            .chain([
                0x84, 0x20, 0, 0x81, 0, 0x20, 0x86, 0x30, 0, 0x83, 1, 5, 0, 0, 0, 0x86, 8, 0,
            ])
            .collect(),
        ],
        _ => Vec::new(),
    }
}
