//! Writes state dicts the way `torch.save` does, so the reader is tested on files it did
//! not write itself: the legacy stream format and the zip format, with strided views.

use std::io::Write;

use otlens::import::{ArrayData, DType, StateDict};

/// A tensor entry: a strided view of the storage `key`.
pub struct View {
    pub name: String,
    pub key: String,
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

/// A storage: its element type and little-endian bytes.
pub struct Storage {
    pub key: String,
    pub dtype: DType,
    pub bytes: Vec<u8>,
}

impl Storage {
    pub fn f32(key: &str, values: &[f32]) -> Storage {
        Storage {
            key: key.into(),
            dtype: DType::F32,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    fn numel(&self) -> usize {
        self.bytes.len() / self.dtype.size()
    }
}

/// One contiguous storage per tensor, keys "0", "1", ... in name order.
pub fn contiguous(state: &StateDict) -> (Vec<View>, Vec<Storage>) {
    let mut views = Vec::new();
    let mut storages = Vec::new();
    for (index, (name, array)) in state.tensors.iter().enumerate() {
        let key = index.to_string();
        let mut stride = vec![1; array.shape.len()];
        for axis in (0..array.shape.len().saturating_sub(1)).rev() {
            stride[axis] = stride[axis + 1] * array.shape[axis + 1];
        }
        let (dtype, bytes) = match &array.data {
            ArrayData::F32(v) => (DType::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            ArrayData::I64(v) => (DType::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        };
        views.push(View {
            name: name.clone(),
            key: key.clone(),
            offset: 0,
            size: array.shape.clone(),
            stride,
        });
        storages.push(Storage { key, dtype, bytes });
    }
    (views, storages)
}

/// A protocol-2 pickle writer for the few types a state dict needs.
#[derive(Default)]
struct Pickle {
    out: Vec<u8>,
    memo: Vec<String>,
}

impl Pickle {
    fn new() -> Pickle {
        let mut pickle = Pickle::default();
        pickle.out.extend([0x80, 2]);
        pickle
    }

    fn op(&mut self, op: u8) -> &mut Self {
        self.out.push(op);
        self
    }

    fn int(&mut self, value: usize) -> &mut Self {
        match value {
            0..=0xff => self.out.extend([b'K', value as u8]),
            0x100..=0xffff => {
                self.out.push(b'M');
                self.out.extend((value as u16).to_le_bytes());
            }
            _ => {
                self.out.push(b'J');
                self.out.extend((value as i32).to_le_bytes());
            }
        }
        self
    }

    fn str(&mut self, text: &str) -> &mut Self {
        self.out.push(b'X');
        self.out.extend((text.len() as u32).to_le_bytes());
        self.out.extend(text.as_bytes());
        self
    }

    /// A global, memoised on first use like Python's pickler does.
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        let full = format!("{module}\n{name}\n");
        if let Some(index) = self.memo.iter().position(|m| *m == full) {
            self.out.extend([b'h', index as u8]);
        } else {
            self.out.push(b'c');
            self.out.extend(full.as_bytes());
            self.out.extend([b'q', self.memo.len() as u8]);
            self.memo.push(full);
        }
        self
    }

    fn tuple(&mut self, values: &[usize]) -> &mut Self {
        self.op(b'(');
        for &v in values {
            self.int(v);
        }
        self.op(b't')
    }

    fn finish(&mut self) -> Vec<u8> {
        self.op(b'.');
        std::mem::take(&mut self.out)
    }
}

/// The state-dict pickle: OrderedDict of `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
fn object_pickle(views: &[View], storages: &[Storage]) -> Vec<u8> {
    let mut p = Pickle::new();
    p.global("collections", "OrderedDict").op(b')').op(b'R').op(b'(');
    for view in views {
        let storage = storages
            .iter()
            .find(|s| s.key == view.key)
            .expect("view of a known storage");
        let class = match storage.dtype {
            DType::F32 => "FloatStorage",
            DType::I64 => "LongStorage",
        };
        p.str(&view.name).global("torch._utils", "_rebuild_tensor_v2").op(b'(');
        p.op(b'(')
            .str("storage")
            .global("torch", class)
            .str(&view.key)
            .str("cpu");
        p.int(storage.numel()).op(b'N').op(b't').op(b'Q');
        p.int(view.offset).tuple(&view.size).tuple(&view.stride).op(0x89);
        p.global("collections", "OrderedDict")
            .op(b')')
            .op(b'R')
            .op(b't')
            .op(b'R');
    }
    p.op(b'u').finish()
}

/// `torch.save(state, f, _use_new_zipfile_serialization=False)`.
pub fn legacy(views: &[View], storages: &[Storage]) -> Vec<u8> {
    let mut out = Vec::new();
    // Magic number 0x1950a86a20f9469cfc6c as LONG1, then the protocol version 1001.
    let mut magic = Pickle::new();
    magic.out.extend([0x8a, 10]);
    magic.out.extend(&0x1950a86a20f9469cfc6cu128.to_le_bytes()[..10]);
    out.extend(magic.finish());
    out.extend(Pickle::new().int(1001).finish());
    let mut sys_info = Pickle::new();
    sys_info
        .op(b'}')
        .op(b'(')
        .str("protocol_version")
        .int(1001)
        .str("little_endian")
        .op(0x88);
    sys_info
        .str("type_sizes")
        .op(b'}')
        .op(b'(')
        .str("short")
        .int(2)
        .str("int")
        .int(4)
        .str("long")
        .int(4);
    out.extend(sys_info.op(b'u').op(b'u').finish());
    out.extend(object_pickle(views, storages));
    let mut keys = Pickle::new();
    keys.op(b']').op(b'(');
    for storage in storages {
        keys.str(&storage.key);
    }
    out.extend(keys.op(b'e').finish());
    for storage in storages {
        out.extend((storage.numel() as u64).to_le_bytes());
        out.extend(&storage.bytes);
    }
    out
}

/// `torch.save(state, f)` (zip format, stored uncompressed like torch does).
pub fn zip(views: &[View], storages: &[Storage]) -> Vec<u8> {
    let mut members: Vec<(String, Vec<u8>)> = vec![
        ("archive/data.pkl".into(), object_pickle(views, storages)),
        ("archive/byteorder".into(), b"little".to_vec()),
    ];
    for storage in storages {
        members.push((format!("archive/data/{}", storage.key), storage.bytes.clone()));
    }
    members.push(("archive/version".into(), b"3\n".to_vec()));
    zip_of(&members)
}

/// A zip archive of `members`, stored uncompressed.
pub fn zip_of(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in members {
        writer.start_file(name.as_str(), options).expect("zip member");
        writer.write_all(bytes).expect("zip write");
    }
    writer.finish().expect("zip finish").into_inner()
}
