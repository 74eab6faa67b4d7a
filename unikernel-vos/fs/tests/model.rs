//! Model-based test: random operation sequences against the file system and an in-memory model;
//! after every operation the answers agree, and at every commit and remount the trees agree.

mod common;

use common::{fs_apply, model_apply, snapshot, Op, Tree, PATHS};
use dvs_fs::{Error, FileSystem, MemDevice};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Step {
    Op(Op),
    Remount,
}

fn op_strategy(bs: u64) -> impl Strategy<Value = Step> {
    let n = PATHS.len();
    prop_oneof![
        3 => (0..n, any::<bool>()).prop_map(|(path, exclusive)| Step::Op(Op::Create { path, exclusive })),
        6 => (0..n, 0..4 * bs, 0..3 * bs as usize, any::<u8>())
            .prop_map(|(path, offset, len, seed)| Step::Op(Op::Write { path, offset, len, seed })),
        1 => (0..n, 0..5 * bs).prop_map(|(path, size)| Step::Op(Op::Truncate { path, size })),
        2 => (0..n).prop_map(|path| Step::Op(Op::Fsync { path })),
        2 => (0..n).prop_map(|path| Step::Op(Op::Mkdir { path })),
        2 => (0..n).prop_map(|path| Step::Op(Op::Unlink { path })),
        2 => (0..n, 0..n).prop_map(|(from, to)| Step::Op(Op::Rename { from, to })),
        1 => Just(Step::Op(Op::Sync)),
        1 => Just(Step::Remount),
    ]
}

fn run(bs: usize, blocks: u64, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut fs = FileSystem::format(MemDevice::new(bs, blocks)).expect("format");
    let mut model = Tree::new();
    let mut durable = Tree::new();
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Remount => {
                fs = FileSystem::mount(fs.into_device()).expect("remount").0;
                model = durable.clone();
                prop_assert_eq!(&snapshot(&mut fs), &model, "after remount at step {}", i);
            }
            Step::Op(op) => {
                let mut next = model.clone();
                let want = model_apply(&mut next, op);
                let got = fs_apply(&mut fs, op);
                match (&want, &got) {
                    (Ok(()), Err(Error::NoSpace)) if !op.commits() => {}
                    _ => {
                        prop_assert_eq!(&got, &want, "step {} {:?}", i, op);
                        model = next;
                    }
                }
                if got.is_ok() && op.commits() {
                    durable = model.clone();
                    prop_assert!(!fs.stats().dirty);
                }
                fs.check()
                    .map_err(|e| TestCaseError::fail(format!("check after {op:?}: {e}")))?;
            }
        }
    }
    prop_assert_eq!(&snapshot(&mut fs), &model);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn small_blocks_roomy_disk(steps in proptest::collection::vec(op_strategy(512), 1..80)) {
        run(512, 2048, &steps)?;
    }

    #[test]
    fn small_blocks_tight_disk(steps in proptest::collection::vec(op_strategy(512), 1..80)) {
        run(512, 48, &steps)?;
    }

    #[test]
    fn four_k_blocks(steps in proptest::collection::vec(op_strategy(4096), 1..60)) {
        run(4096, 256, &steps)?;
    }
}
