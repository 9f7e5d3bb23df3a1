//! safetensors checkpoint I/O: round trips of every dtype, views, sharding, metadata, and
//! strict rejection (as errors, never panics) of malformed files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use l4_core::checkpoint::{Checkpoint, TensorInfo, save_safetensors, save_sharded};
use l4_core::{CpuStorage, DType, Device, Error, Tensor};
use proptest::prelude::*;
use tempfile::TempDir;

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A tensor of `dtype` filled with random bit patterns (NaNs and infinities included for the
/// float dtypes; 0/1 for bool).
fn random_tensor(rng: &mut Rng, dtype: DType, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let mut bytes = rng.bytes(n * dtype.size_in_bytes());
    if dtype == DType::Bool {
        bytes.iter_mut().for_each(|b| *b &= 1);
    }
    Tensor::from_cpu_storage(CpuStorage::from_le_bytes(dtype, &bytes).unwrap(), shape).unwrap()
}

/// The tensor's logical elements as little-endian bytes: a bit-exact comparison key (NaN-safe).
fn bits(t: &Tensor) -> Vec<u8> {
    t.cpu_storage("bits").unwrap().gather(t.layout()).to_le_bytes()
}

fn file_error_message(err: Error) -> String {
    match &err {
        Error::File { .. } => err.to_string(),
        other => panic!("expected Error::File, got {other:?}"),
    }
}

/// Raw safetensors bytes from a header string and a data section.
fn raw_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Opens `bytes` as a file and returns the error message, asserting that it is a file error.
fn open_err(bytes: &[u8]) -> String {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "bad.safetensors", bytes);
    let err = Checkpoint::open(&path).expect_err("malformed file must not open");
    let msg = file_error_message(err);
    assert!(msg.contains("bad.safetensors"), "message does not name the file: {msg}");
    msg
}

fn sample_tensors() -> Vec<(String, Tensor)> {
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    let shapes: [&[usize]; 4] = [&[3, 5], &[], &[2, 0, 4], &[7]];
    let mut out = Vec::new();
    for (i, dtype) in DType::ALL.into_iter().enumerate() {
        for (j, shape) in shapes.iter().enumerate() {
            out.push((format!("layer.{i}.{dtype}.{j}"), random_tensor(&mut rng, dtype, shape)));
        }
    }
    out
}

fn as_refs(tensors: &[(String, Tensor)]) -> Vec<(&str, &Tensor)> {
    tensors.iter().map(|(n, t)| (n.as_str(), t)).collect()
}

fn assert_holds(ckpt: &Checkpoint, tensors: &[(String, Tensor)]) {
    assert_eq!(ckpt.len(), tensors.len());
    for (name, t) in tensors {
        let info = ckpt.info(name).unwrap();
        assert_eq!((info.dtype, info.shape.as_slice()), (t.dtype(), t.shape()), "{name}");
        let loaded = ckpt.load_expect(name, t.shape(), t.dtype(), Device::Cpu).unwrap();
        assert_eq!(loaded.shape(), t.shape(), "{name}");
        assert_eq!(loaded.dtype(), t.dtype(), "{name}");
        assert!(loaded.is_contiguous());
        assert_eq!(bits(&loaded), bits(t), "{name}");
    }
}

#[test]
fn every_dtype_round_trips_bit_exactly() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("all.safetensors");
    let tensors = sample_tensors();
    save_safetensors(&path, &as_refs(&tensors), None).unwrap();
    let ckpt = Checkpoint::open(&path).unwrap();
    assert_holds(&ckpt, &tensors);
    let mut names: Vec<_> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(ckpt.names(), names);
    assert!(ckpt.contains("layer.0.f32.0"));
    assert!(!ckpt.contains("nope"));
    assert_eq!(ckpt.path(), path);
    assert_eq!(ckpt.files(), vec![path.as_path()]);
    assert_eq!(
        ckpt.info("layer.2.bf16.0").unwrap(),
        TensorInfo {
            dtype: DType::BF16,
            shape: vec![3, 5],
            file: path.clone()
        }
    );
    assert!(ckpt.metadata().is_empty());
}

#[test]
fn written_files_are_aligned_and_leave_no_temporaries() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("x.safetensors");
    let tensors = sample_tensors();
    save_safetensors(&path, &as_refs(&tensors), None).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert_eq!((8 + header_len) % 8, 0, "data section must be 8-byte aligned");
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("x.safetensors")]);
}

#[test]
fn files_interoperate_with_the_reference_safetensors_crate() {
    let dir = TempDir::new().unwrap();
    // Ours → reference reader.
    let path = dir.path().join("ours.safetensors");
    let tensors = sample_tensors();
    save_safetensors(&path, &as_refs(&tensors), None).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let parsed = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (name, t) in &tensors {
        let view = parsed.tensor(name).unwrap();
        assert_eq!(view.shape(), t.shape());
        assert_eq!(view.dtype().to_string(), t.dtype().safetensors_name());
        assert_eq!(view.data(), bits(t).as_slice(), "{name}");
    }
    // Reference writer → ours.
    let data: Vec<u8> = (0..24u8).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![3, 4], &data).unwrap();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let theirs = dir.path().join("theirs.safetensors");
    safetensors::serialize_to_file([("h", view)], Some(meta), &theirs).unwrap();
    let ckpt = Checkpoint::open(&theirs).unwrap();
    let h = ckpt.load("h", Device::Cpu).unwrap();
    assert_eq!((h.shape(), h.dtype()), (&[3, 4][..], DType::F16));
    assert_eq!(bits(&h), data);
    assert_eq!(ckpt.metadata().get("format").map(String::as_str), Some("pt"));
}

#[test]
fn non_contiguous_views_are_saved_as_their_logical_values() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("views.safetensors");
    let base = Tensor::arange(60, DType::F32, Device::Cpu)
        .unwrap()
        .reshape(&[3, 4, 5])
        .unwrap();
    let transposed = base.transpose(0, 2).unwrap();
    let narrowed = base.narrow(1, 1, 2).unwrap().narrow(2, 3, 2).unwrap();
    let broadcast = Tensor::arange(4, DType::I64, Device::Cpu)
        .unwrap()
        .broadcast_as(&[3, 4])
        .unwrap();
    let permuted_bf16 = base.to_dtype(DType::BF16).unwrap().permute(&[1, 2, 0]).unwrap();
    let views = [
        ("transposed", &transposed),
        ("narrowed", &narrowed),
        ("broadcast", &broadcast),
        ("permuted_bf16", &permuted_bf16),
    ];
    assert!(views.iter().all(|(_, v)| !v.is_contiguous()));
    save_safetensors(&path, &views, None).unwrap();
    let ckpt = Checkpoint::open(&path).unwrap();
    for (name, view) in views {
        let loaded = ckpt.load(name, Device::Cpu).unwrap();
        let expected = view.contiguous().unwrap();
        assert_eq!(loaded.shape(), expected.shape(), "{name}");
        assert_eq!(bits(&loaded), bits(&expected), "{name}");
        assert_eq!(loaded.to_f64_vec().unwrap(), view.to_f64_vec().unwrap(), "{name}");
    }
}

#[test]
fn metadata_round_trips() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("m.safetensors");
    let t = Tensor::zeros(&[2], DType::F32, Device::Cpu).unwrap();
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("note".to_string(), "quotes \" and \\ and ünïcode\n".to_string()),
    ]);
    save_safetensors(&path, &[("t", &t)], Some(&metadata)).unwrap();
    let ckpt = Checkpoint::open(&path).unwrap();
    assert_eq!(ckpt.metadata(), &metadata);
    assert_eq!(ckpt.names(), vec!["t"]);

    // Metadata with no tensors at all is a valid file too.
    let empty = dir.path().join("empty.safetensors");
    save_safetensors(&empty, &[], Some(&metadata)).unwrap();
    let ckpt = Checkpoint::open(&empty).unwrap();
    assert!(ckpt.is_empty());
    assert_eq!(ckpt.metadata(), &metadata);
}

#[test]
fn sharded_checkpoints_round_trip() {
    let dir = TempDir::new().unwrap();
    let tensors = sample_tensors();
    // Small shards: many files, and tensors larger than a shard get one of their own.
    save_sharded(dir.path(), &as_refs(&tensors), 40).unwrap();
    let index_path = dir.path().join("model.safetensors.index.json");
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let total: usize = tensors
        .iter()
        .map(|(_, t)| t.elem_count() * t.dtype().size_in_bytes())
        .sum();
    assert_eq!(index["metadata"]["total_size"], total);
    let weight_map = index["weight_map"].as_object().unwrap();
    assert_eq!(weight_map.len(), tensors.len());

    for ckpt in [
        Checkpoint::open(dir.path()).unwrap(),
        Checkpoint::open(&index_path).unwrap(),
    ] {
        assert_eq!(ckpt.path(), index_path);
        assert_holds(&ckpt, &tensors);
        let files = ckpt.files();
        assert!(files.len() > 3, "expected several shards, got {files:?}");
        let count = files.len();
        for (i, file) in files.iter().enumerate() {
            let name = file.file_name().unwrap().to_str().unwrap();
            assert_eq!(name, format!("model-{:05}-of-{count:05}.safetensors", i + 1));
        }
        for (name, _) in &tensors {
            let shard = weight_map[name].as_str().unwrap();
            assert_eq!(ckpt.info(name).unwrap().file, dir.path().join(shard));
        }
    }

    // One big shard when the limit allows it.
    let one = TempDir::new().unwrap();
    save_sharded(one.path(), &as_refs(&tensors), usize::MAX).unwrap();
    let ckpt = Checkpoint::open(one.path()).unwrap();
    assert_eq!(ckpt.files().len(), 1);
    assert_holds(&ckpt, &tensors);
}

#[test]
fn a_directory_opens_its_single_file_or_index() {
    let dir = TempDir::new().unwrap();
    let err = Checkpoint::open(dir.path()).unwrap_err();
    let msg = file_error_message(err);
    assert!(msg.contains("model.safetensors.index.json") && msg.contains("model.safetensors"));

    let t = Tensor::arange(6, DType::I32, Device::Cpu).unwrap();
    save_safetensors(dir.path().join("model.safetensors"), &[("t", &t)], None).unwrap();
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ckpt.path(), dir.path().join("model.safetensors"));
    assert_eq!(
        ckpt.load("t", Device::Cpu).unwrap().to_vec::<i32>().unwrap(),
        vec![0, 1, 2, 3, 4, 5]
    );

    // The index takes precedence when both exist.
    let u = Tensor::arange(3, DType::U8, Device::Cpu).unwrap();
    save_sharded(dir.path(), &[("u", &u)], 1024).unwrap();
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ckpt.names(), vec!["u"]);

    let missing = file_error_message(Checkpoint::open(dir.path().join("nope.safetensors")).unwrap_err());
    assert!(missing.contains("nope.safetensors"));
}

#[test]
fn missing_tensors_and_expectation_mismatches_are_named() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("w.safetensors");
    let t = Tensor::zeros(&[2, 3], DType::BF16, Device::Cpu).unwrap();
    save_safetensors(&path, &[("blk.0.w", &t)], None).unwrap();
    let ckpt = Checkpoint::open(&path).unwrap();

    let msg = file_error_message(ckpt.load("blk.1.w", Device::Cpu).unwrap_err());
    assert!(msg.contains("blk.1.w") && msg.contains("w.safetensors"), "{msg}");
    let msg = file_error_message(ckpt.info("blk.1.w").unwrap_err());
    assert!(msg.contains("blk.1.w"), "{msg}");

    let msg = file_error_message(
        ckpt.load_expect("blk.0.w", &[3, 2], DType::BF16, Device::Cpu)
            .unwrap_err(),
    );
    assert!(msg.contains("blk.0.w") && msg.contains("w.safetensors"), "{msg}");
    assert!(msg.contains("[3, 2]") && msg.contains("[2, 3]"), "{msg}");

    let msg = file_error_message(
        ckpt.load_expect("blk.0.w", &[2, 3], DType::F16, Device::Cpu)
            .unwrap_err(),
    );
    assert!(msg.contains("blk.0.w") && msg.contains("w.safetensors"), "{msg}");
    assert!(msg.contains("f16") && msg.contains("bf16"), "{msg}");

    assert!(ckpt.load_expect("blk.0.w", &[2, 3], DType::BF16, Device::Cpu).is_ok());
}

#[test]
fn saving_rejects_duplicate_and_reserved_names_and_leaves_files_untouched() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("d.safetensors");
    let t = Tensor::zeros(&[2], DType::F32, Device::Cpu).unwrap();
    save_safetensors(&path, &[("a", &t)], None).unwrap();
    let before = std::fs::read(&path).unwrap();

    let msg = file_error_message(save_safetensors(&path, &[("b", &t), ("b", &t)], None).unwrap_err());
    assert!(msg.contains("duplicate") && msg.contains("`b`"), "{msg}");
    assert!(save_safetensors(&path, &[("__metadata__", &t)], None).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before);

    let sharded = dir.path().join("sharded");
    assert!(save_sharded(&sharded, &[("x", &t), ("x", &t)], 100).is_err());
    assert!(save_sharded(&sharded, &[("x", &t)], 0).is_err());
    assert!(!sharded.join("model.safetensors.index.json").exists());

    // A failure after the data is written (here: the destination is a directory, so the final
    // rename fails) removes the temporary file.
    let occupied = dir.path().join("occupied");
    std::fs::create_dir(&occupied).unwrap();
    let msg = file_error_message(save_safetensors(&occupied, &[("a", &t)], None).unwrap_err());
    assert!(msg.contains("occupied"), "{msg}");
    std::fs::remove_dir(&occupied).unwrap();

    // A destination whose directory does not exist fails cleanly.
    assert!(save_safetensors(dir.path().join("no/such/dir/x.safetensors"), &[("a", &t)], None).is_err());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("d.safetensors")]);
}

#[test]
fn checkpoints_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Checkpoint>();
}

/// Loading onto and saving from a CUDA device; skipped where no CUDA device is usable.
#[test]
fn cuda_tensors_round_trip_when_a_device_is_present() {
    if l4_core::cuda::backend(0).is_err() {
        eprintln!("no CUDA device: skipped");
        return;
    }
    let gpu = Device::Cuda(0);
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("gpu.safetensors");
    let tensors = sample_tensors();
    save_safetensors(&path, &as_refs(&tensors), None).unwrap();
    let ckpt = Checkpoint::open(&path).unwrap();
    let mut on_device = Vec::new();
    for (name, t) in &tensors {
        let loaded = ckpt.load_expect(name, t.shape(), t.dtype(), gpu).unwrap();
        assert_eq!(loaded.device(), gpu);
        assert_eq!(bits(&loaded.to_device(Device::Cpu).unwrap()), bits(t), "{name}");
        on_device.push((name.clone(), loaded));
    }
    // Device tensors save like host tensors.
    let again = dir.path().join("again.safetensors");
    save_safetensors(&again, &as_refs(&on_device), None).unwrap();
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&path).unwrap());
}

// ---- Malformed single files -------------------------------------------------------------

const GOOD_HEADER: &str =
    r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[3],"data_offsets":[8,11]}}"#;

#[test]
fn a_hand_written_file_opens() {
    let bytes = raw_file(GOOD_HEADER, &[0, 0, 128, 63, 0, 0, 0, 64, 1, 2, 3]);
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "ok.safetensors", &bytes);
    let ckpt = Checkpoint::open(&path).unwrap();
    assert_eq!(
        ckpt.load("a", Device::Cpu).unwrap().to_vec::<f32>().unwrap(),
        vec![1.0, 2.0]
    );
    assert_eq!(
        ckpt.load("b", Device::Cpu).unwrap().to_vec::<u8>().unwrap(),
        vec![1, 2, 3]
    );
    // Entries may appear in any order in the header; trailing space padding is allowed.
    let reordered = r#"{"b":{"dtype":"U8","shape":[3],"data_offsets":[8,11]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}   "#;
    let path = write(
        dir.path(),
        "ok2.safetensors",
        &raw_file(reordered, &bytes[8 + GOOD_HEADER.len()..]),
    );
    assert_eq!(Checkpoint::open(&path).unwrap().names(), vec!["a", "b"]);
}

#[test]
fn empty_and_tiny_files_are_rejected() {
    let msg = open_err(&[]);
    assert!(msg.contains("empty"), "{msg}");
    let msg = open_err(&[1, 2, 3, 4]);
    assert!(msg.contains("4 bytes"), "{msg}");
    open_err(&[0; 7]);
    // A zero header length: no JSON at all.
    open_err(&[0; 8]);
}

#[test]
fn header_length_beyond_the_file_is_rejected() {
    let mut bytes = raw_file(GOOD_HEADER, &[0; 11]);
    let too_long = bytes.len() as u64;
    bytes[..8].copy_from_slice(&too_long.to_le_bytes());
    let msg = open_err(&bytes);
    assert!(msg.contains("header length"), "{msg}");
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    open_err(&bytes);
}

#[test]
fn headers_that_are_not_json_objects_are_rejected() {
    for header in [
        "not json at all",
        "{\"a\": ",
        "[1, 2, 3]",
        "{\"a\":1}",
        "\u{FEFF}{}",
        "{}{}",
    ] {
        open_err(&raw_file(header, &[]));
    }
    // Invalid UTF-8.
    let mut bytes = raw_file("{\"\u{e9}\":1}", &[]);
    bytes[10] = 0xFF;
    open_err(&bytes);
}

#[test]
fn offsets_outside_the_data_section_are_rejected() {
    let header = r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    let msg = open_err(&raw_file(header, &[0; 8]));
    assert!(msg.contains("`w`"), "{msg}");
    let header = r#"{"w":{"dtype":"F32","shape":[0],"data_offsets":[9,9]}}"#;
    open_err(&raw_file(header, &[0; 8]));
    let header = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#;
    open_err(&raw_file(header, &[0; 4]));
}

#[test]
fn offsets_that_disagree_with_shape_and_dtype_are_rejected() {
    let header = r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#;
    let msg = open_err(&raw_file(header, &[0; 16]));
    assert!(msg.contains("`w`") && msg.contains("12"), "{msg}");
    let header = r#"{"w":{"dtype":"BF16","shape":[4,4],"data_offsets":[0,16]}}"#;
    open_err(&raw_file(header, &[0; 16]));
    // Overflowing shapes.
    let header = r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}}"#;
    open_err(&raw_file(header, &[0; 16]));
    // Negative and fractional dimensions, wrong field types, missing fields.
    for entry in [
        r#"{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}"#,
        r#"{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}"#,
        r#"{"dtype":"F32","shape":"1","data_offsets":[0,4]}"#,
        r#"{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}"#,
        r#"{"dtype":"F32","shape":[1]}"#,
        r#"{"dtype":7,"shape":[1],"data_offsets":[0,4]}"#,
        r#"[1,2]"#,
    ] {
        open_err(&raw_file(&format!("{{\"w\":{entry}}}"), &[0; 4]));
    }
}

#[test]
fn overlapping_gapped_and_trailing_data_is_rejected() {
    // Overlap.
    let header =
        r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#;
    let msg = open_err(&raw_file(header, &[0; 6]));
    assert!(msg.contains("overlaps"), "{msg}");
    // Both tensors on the same bytes.
    let header =
        r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
    open_err(&raw_file(header, &[0; 4]));
    // A hole.
    let header =
        r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[6,10]}}"#;
    open_err(&raw_file(header, &[0; 10]));
    // Bytes after the last tensor.
    let header = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
    let msg = open_err(&raw_file(header, &[0; 5]));
    assert!(msg.contains("trailing"), "{msg}");
}

#[test]
fn truncated_data_sections_are_rejected() {
    let bytes = raw_file(GOOD_HEADER, &[0; 11]);
    for cut in 1..=11 {
        open_err(&bytes[..bytes.len() - cut]);
    }
    // Cut inside the header too.
    for len in [9, 20, 8 + GOOD_HEADER.len() - 1] {
        open_err(&bytes[..len]);
    }
}

#[test]
fn unknown_dtypes_and_duplicate_names_are_rejected() {
    let header = r#"{"w":{"dtype":"F7","shape":[2],"data_offsets":[0,2]}}"#;
    let msg = open_err(&raw_file(header, &[0; 2]));
    assert!(msg.contains("`w`") && msg.contains("F7"), "{msg}");
    let header = r#"{"w":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}}"#;
    open_err(&raw_file(header, &[0; 4]));
    let header =
        r#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#;
    let msg = open_err(&raw_file(header, &[0; 2]));
    assert!(msg.contains("twice"), "{msg}");
    // Metadata must be a string → string map.
    let header = r#"{"__metadata__":{"n":1}}"#;
    open_err(&raw_file(header, &[]));
}

#[test]
fn unsupported_dtypes_open_but_do_not_load() {
    let header = r#"{"d":{"dtype":"F64","shape":[2],"data_offsets":[0,16]},"i":{"dtype":"I16","shape":[1],"data_offsets":[16,18]},"u":{"dtype":"U8","shape":[1],"data_offsets":[18,19]}}"#;
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "mixed.safetensors", &raw_file(header, &[7; 19]));
    let ckpt = Checkpoint::open(&path).unwrap();
    assert_eq!(ckpt.names(), vec!["d", "i", "u"]);
    assert_eq!(ckpt.load("u", Device::Cpu).unwrap().to_vec::<u8>().unwrap(), vec![7]);
    for (name, dtype) in [("d", "F64"), ("i", "I16")] {
        let msg = file_error_message(ckpt.load(name, Device::Cpu).unwrap_err());
        assert!(msg.contains(&format!("`{name}`")) && msg.contains(dtype), "{msg}");
        assert!(msg.contains("mixed.safetensors"), "{msg}");
        assert!(ckpt.info(name).is_err());
    }
    // Sub-byte dtypes must fill whole bytes.
    let header = r#"{"f":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}"#;
    open_err(&raw_file(header, &[0; 2]));
}

#[test]
fn bool_bytes_other_than_zero_and_one_fail_to_load() {
    let header = r#"{"m":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}}"#;
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "b.safetensors", &raw_file(header, &[0, 1, 2]));
    let ckpt = Checkpoint::open(&path).unwrap();
    let msg = file_error_message(ckpt.load("m", Device::Cpu).unwrap_err());
    assert!(msg.contains("`m`") && msg.contains("b.safetensors"), "{msg}");
}

// ---- Malformed indexes ------------------------------------------------------------------

fn sharded_fixture() -> (TempDir, Vec<(String, Tensor)>) {
    let dir = TempDir::new().unwrap();
    let mut rng = Rng(99);
    let tensors: Vec<_> = (0..4)
        .map(|i| (format!("t{i}"), random_tensor(&mut rng, DType::F32, &[4])))
        .collect();
    save_sharded(dir.path(), &as_refs(&tensors), 16).unwrap();
    (dir, tensors)
}

fn write_index(dir: &Path, json: &str) -> PathBuf {
    write(dir, "model.safetensors.index.json", json.as_bytes())
}

#[test]
fn an_index_naming_a_missing_shard_is_rejected() {
    let (dir, _) = sharded_fixture();
    std::fs::remove_file(dir.path().join("model-00003-of-00004.safetensors")).unwrap();
    let msg = file_error_message(Checkpoint::open(dir.path()).unwrap_err());
    assert!(msg.contains("model.safetensors.index.json"), "{msg}");
    assert!(
        msg.contains("model-00003-of-00004.safetensors") && msg.contains("`t2`"),
        "{msg}"
    );
}

#[test]
fn an_index_naming_a_tensor_absent_from_its_shard_is_rejected() {
    let (dir, _) = sharded_fixture();
    write_index(
        dir.path(),
        r#"{"metadata":{"total_size":32},"weight_map":{"t0":"model-00001-of-00004.safetensors","t1":"model-00001-of-00004.safetensors"}}"#,
    );
    let msg = file_error_message(Checkpoint::open(dir.path()).unwrap_err());
    assert!(msg.contains("model.safetensors.index.json"), "{msg}");
    assert!(
        msg.contains("model-00001-of-00004.safetensors") && msg.contains("`t1`"),
        "{msg}"
    );
}

#[test]
fn an_index_only_exposes_the_tensors_it_maps() {
    let (dir, tensors) = sharded_fixture();
    write_index(
        dir.path(),
        r#"{"weight_map":{"t3":"model-00004-of-00004.safetensors","t0":"model-00001-of-00004.safetensors"}}"#,
    );
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ckpt.names(), vec!["t0", "t3"]);
    assert_eq!(bits(&ckpt.load("t3", Device::Cpu).unwrap()), bits(&tensors[3].1));
}

#[test]
fn malformed_indexes_are_rejected() {
    let (dir, _) = sharded_fixture();
    for json in [
        "",
        "not json",
        "{}",
        r#"{"weight_map":[]}"#,
        r#"{"weight_map":{"t0":1}}"#,
        r#"{"weight_map":{"t0":"../model-00001-of-00004.safetensors"}}"#,
        r#"{"weight_map":{"t0":"/etc/passwd"}}"#,
        r#"{"weight_map":{"t0":""}}"#,
        r#"{"weight_map":{"t0":"model-00001-of-00004.safetensors","t0":"model-00001-of-00004.safetensors"}}"#,
    ] {
        let index = write_index(dir.path(), json);
        let msg = file_error_message(Checkpoint::open(&index).unwrap_err());
        assert!(msg.contains("model.safetensors.index.json"), "{json}: {msg}");
    }
    // A corrupt shard is reported against the shard.
    write_index(
        dir.path(),
        r#"{"weight_map":{"t0":"model-00001-of-00004.safetensors"}}"#,
    );
    write(dir.path(), "model-00001-of-00004.safetensors", b"garbage!garbage!");
    let msg = file_error_message(Checkpoint::open(dir.path()).unwrap_err());
    assert!(msg.contains("model-00001-of-00004.safetensors"), "{msg}");
}

// ---- Fuzzing ----------------------------------------------------------------------------

/// A valid file with a few tensors, for mutation.
fn fuzz_seed() -> Vec<u8> {
    static SEED: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    SEED.get_or_init(make_fuzz_seed).clone()
}

fn make_fuzz_seed() -> Vec<u8> {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("seed.safetensors");
    let mut rng = Rng(7);
    let a = random_tensor(&mut rng, DType::BF16, &[2, 3]);
    let b = random_tensor(&mut rng, DType::Bool, &[5]);
    let c = random_tensor(&mut rng, DType::F8E4M3, &[4]);
    let meta = HashMap::from([("k".to_string(), "v".to_string())]);
    save_safetensors(&path, &[("a", &a), ("b", &b), ("c", &c)], Some(&meta)).unwrap();
    std::fs::read(path).unwrap()
}

/// Opens `bytes` and loads everything; any outcome but a panic is fine.
fn open_and_load_everything(dir: &Path, bytes: &[u8]) {
    let path = write(dir, "fuzz.safetensors", bytes);
    if let Ok(ckpt) = Checkpoint::open(&path) {
        for name in ckpt.names() {
            let _ = ckpt.info(name);
            let _ = ckpt.load(name, Device::Cpu);
        }
        let _ = ckpt.metadata();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn corrupted_files_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..6),
        digit_edits in prop::collection::vec((any::<prop::sample::Index>(), b'0'..=b'9'), 0..3),
        truncate in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let dir = TempDir::new().unwrap();
        let mut bytes = fuzz_seed();
        for (at, mask) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= mask;
        }
        // Digit edits keep the header JSON valid more often, reaching the offset checks.
        let digits: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i].is_ascii_digit()).collect();
        if !digits.is_empty() {
            for (at, digit) in digit_edits {
                bytes[digits[at.index(digits.len())]] = digit;
            }
        }
        if let Some(at) = truncate {
            bytes.truncate(at.index(bytes.len() + 1));
        }
        open_and_load_everything(dir.path(), &bytes);
    }
}
