//! `l4-experiments`: the `l4` command-line tool and the experiment runners behind it.

pub mod ablate;
pub mod bench;
pub mod info;
pub mod plan;
pub mod run;
