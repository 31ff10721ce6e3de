//! A small, bounded pickle virtual machine for PyTorch checkpoints.
//!
//! Why not a crate: `serde-pickle` refuses persistent ids (`BINPERSID`), which is how
//! torch refers to tensor storages; `candle-core`'s and `repugnant-pickle`'s readers only
//! know the zip format and pull in a whole tensor framework or an unmaintained 0.0.1.
//! The opcodes `torch.save` emits (protocols 2 to 4) are few, so they are interpreted here,
//! with limits so that a hostile file fails with an error instead of exhausting memory.
//!
//! Only three callables are understood; everything else is kept as an opaque call:
//! `collections.OrderedDict` (the state dict), `torch._utils._rebuild_tensor_v2` (a view
//! of a storage) and `torch._utils._rebuild_parameter` (a parameter wrapping a tensor).

use std::collections::HashMap;

use super::ImportError;

/// Deepest nesting of containers accepted (a state dict needs about 4).
const MAX_DEPTH: usize = 64;
/// Most values a pickle may build, copies from the memo included (16 string bytes count as one).
const MAX_NODES: usize = 20_000_000;

/// Where a tensor's numbers live, as named by the checkpoint's persistent id.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRef {
    pub key: String,
    pub dtype: DType,
    /// Number of elements in the storage.
    pub numel: usize,
}

/// Element types of the storages this reader understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    I64,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::I64 => 8,
        }
    }
}

/// A strided view of a storage, from `_rebuild_tensor_v2(storage, offset, size, stride, ...)`.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

/// A container's items with its nesting depth and node count kept up to date, so that
/// limits are checked in constant time however the container was built.
#[derive(Clone, Debug, PartialEq)]
pub struct Items<T> {
    pub items: Vec<T>,
    depth: usize,
    nodes: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Global {
        module: String,
        name: String,
    },
    Tuple(Items<Value>),
    List(Items<Value>),
    Dict(Items<(Value, Value)>),
    /// A callable applied to arguments that this reader does not interpret.
    Call(Items<Value>),
    Storage(StorageRef),
    Tensor(TensorRef),
    Mark,
}

impl Value {
    fn depth(&self) -> usize {
        match self {
            Value::Tuple(c) | Value::List(c) | Value::Call(c) => c.depth,
            Value::Dict(c) => c.depth,
            _ => 0,
        }
    }

    /// What the value costs to copy, in nodes (long strings count as several).
    fn nodes(&self) -> usize {
        match self {
            Value::Tuple(c) | Value::List(c) | Value::Call(c) => c.nodes,
            Value::Dict(c) => c.nodes,
            Value::Str(s) => 1 + s.len() / 16,
            Value::Bytes(b) => 1 + b.len() / 16,
            _ => 1,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Global { .. } => "global",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Call(_) => "object",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
            Value::Mark => "mark",
        }
    }

    pub fn as_int(&self) -> Result<i128, ImportError> {
        match self {
            Value::Int(i) => Ok(*i),
            Value::Bool(b) => Ok(i128::from(*b)),
            other => Err(corrupt(format!("expected an int, found {}", other.type_name()))),
        }
    }

    pub fn as_usize(&self) -> Result<usize, ImportError> {
        usize::try_from(self.as_int()?).map_err(|_| corrupt("expected a non-negative size"))
    }

    pub fn as_str(&self) -> Result<&str, ImportError> {
        match self {
            Value::Str(s) => Ok(s),
            other => Err(corrupt(format!("expected a str, found {}", other.type_name()))),
        }
    }

    pub fn as_items(&self) -> Result<&[Value], ImportError> {
        match self {
            Value::Tuple(c) | Value::List(c) => Ok(&c.items),
            other => Err(corrupt(format!(
                "expected a tuple or list, found {}",
                other.type_name()
            ))),
        }
    }

    pub fn into_dict(self) -> Result<Vec<(Value, Value)>, ImportError> {
        match self {
            Value::Dict(c) => Ok(c.items),
            other => Err(corrupt(format!("expected a dict, found {}", other.type_name()))),
        }
    }
}

impl<T> Items<T> {
    fn empty() -> Items<T> {
        Items {
            items: Vec::new(),
            depth: 1,
            nodes: 1,
        }
    }

    fn with(items: Vec<T>, depth: usize, nodes: usize) -> Result<Items<T>, ImportError> {
        if depth > MAX_DEPTH {
            return Err(corrupt(format!("containers nested deeper than {MAX_DEPTH}")));
        }
        Ok(Items { items, depth, nodes })
    }
}

fn tuple_of(items: Vec<Value>) -> Result<Items<Value>, ImportError> {
    let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
    let nodes = 1 + items.iter().map(Value::nodes).sum::<usize>();
    Items::with(items, depth, nodes)
}

fn dict_of(pairs: Vec<(Value, Value)>) -> Result<Items<(Value, Value)>, ImportError> {
    let depth = 1 + pairs.iter().map(|(k, v)| k.depth().max(v.depth())).max().unwrap_or(0);
    let nodes = 1 + pairs.iter().map(|(k, v)| k.nodes() + v.nodes()).sum::<usize>();
    Items::with(pairs, depth, nodes)
}

fn corrupt(message: impl Into<String>) -> ImportError {
    ImportError::Corrupt(message.into())
}

/// Runs one pickle from the start of `bytes`; returns its value and the number of bytes it used.
pub fn load(bytes: &[u8]) -> Result<(Value, usize), ImportError> {
    let mut machine = Machine {
        input: bytes,
        position: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
        nodes: 0,
    };
    let value = machine.run()?;
    Ok((value, machine.position))
}

struct Machine<'a> {
    input: &'a [u8],
    position: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
    nodes: usize,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ImportError> {
        let end = self.position.checked_add(n).filter(|&end| end <= self.input.len());
        let end = end.ok_or_else(|| {
            ImportError::Truncated(format!(
                "a pickle needs {n} more bytes at offset {} but the data ends at {}",
                self.position,
                self.input.len()
            ))
        })?;
        let slice = &self.input[self.position..end];
        self.position = end;
        Ok(slice)
    }

    fn byte(&mut self) -> Result<u8, ImportError> {
        Ok(self.take(1)?[0])
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], ImportError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32_len(&mut self) -> Result<usize, ImportError> {
        Ok(u32::from_le_bytes(self.fixed()?) as usize)
    }

    fn u64_len(&mut self) -> Result<usize, ImportError> {
        usize::try_from(u64::from_le_bytes(self.fixed()?)).map_err(|_| corrupt("length does not fit in memory"))
    }

    fn line(&mut self) -> Result<String, ImportError> {
        let rest = &self.input[self.position..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| ImportError::Truncated("a pickle text field has no end of line".into()))?;
        let text = String::from_utf8(rest[..end].to_vec()).map_err(|_| corrupt("a pickle text field is not UTF-8"))?;
        self.position += end + 1;
        Ok(text)
    }

    fn utf8(&mut self, len: usize) -> Result<String, ImportError> {
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| corrupt("a pickle string is not UTF-8"))
    }

    fn push(&mut self, value: Value) -> Result<(), ImportError> {
        self.nodes += value.nodes();
        if self.nodes > MAX_NODES {
            return Err(corrupt(format!("the pickle builds more than {MAX_NODES} values")));
        }
        self.stack.push(value);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value, ImportError> {
        match self.stack.pop() {
            Some(Value::Mark) | None => Err(corrupt("pickle stack underflow")),
            Some(value) => Ok(value),
        }
    }

    fn top(&mut self) -> Result<&mut Value, ImportError> {
        match self.stack.last_mut() {
            Some(Value::Mark) | None => Err(corrupt("pickle stack underflow")),
            Some(value) => Ok(value),
        }
    }

    /// Pops everything above the topmost mark, and the mark.
    fn pop_mark(&mut self) -> Result<Vec<Value>, ImportError> {
        let mark = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or_else(|| corrupt("pickle mark missing"))?;
        let items = self.stack.split_off(mark + 1);
        self.stack.pop();
        Ok(items)
    }

    fn memo_put(&mut self, index: u32) -> Result<(), ImportError> {
        let value = self.top()?.clone();
        self.memo.insert(index, value);
        Ok(())
    }

    fn memo_get(&mut self, index: u32) -> Result<(), ImportError> {
        let value = self
            .memo
            .get(&index)
            .ok_or_else(|| corrupt(format!("pickle memo entry {index} is missing")))?
            .clone();
        self.push(value)
    }

    fn append(&mut self, new: Vec<Value>) -> Result<(), ImportError> {
        match self.top()? {
            Value::List(list) => {
                let depth = list.depth.max(1 + new.iter().map(Value::depth).max().unwrap_or(0));
                let nodes = list.nodes + new.iter().map(Value::nodes).sum::<usize>();
                let mut items = std::mem::take(&mut list.items);
                items.extend(new);
                *list = Items::with(items, depth, nodes)?;
                Ok(())
            }
            other => Err(corrupt(format!("APPEND to a {}", other.type_name()))),
        }
    }

    fn set_items(&mut self, flat: Vec<Value>) -> Result<(), ImportError> {
        if !flat.len().is_multiple_of(2) {
            return Err(corrupt("SETITEMS with an odd number of values"));
        }
        let mut pairs = Vec::with_capacity(flat.len() / 2);
        let mut flat = flat.into_iter();
        while let (Some(key), Some(value)) = (flat.next(), flat.next()) {
            pairs.push((key, value));
        }
        match self.top()? {
            Value::Dict(dict) => {
                let added = dict_of(pairs)?;
                let mut items = std::mem::take(&mut dict.items);
                items.extend(added.items);
                *dict = Items::with(items, dict.depth.max(added.depth), dict.nodes + added.nodes - 1)?;
                Ok(())
            }
            other => Err(corrupt(format!("SETITEM on a {}", other.type_name()))),
        }
    }

    fn global(&mut self, module: String, name: String) -> Result<(), ImportError> {
        self.push(Value::Global { module, name })
    }

    fn reduce(&mut self, callable: Value, args: Value) -> Result<Value, ImportError> {
        if let Value::Global { module, name } = &callable {
            match (module.as_str(), name.as_str()) {
                ("collections", "OrderedDict") => return Ok(Value::Dict(Items::empty())),
                ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                    return rebuild_tensor(args.as_items()?).map(Value::Tensor)
                }
                ("torch._utils", "_rebuild_parameter") => {
                    return args
                        .as_items()?
                        .first()
                        .cloned()
                        .ok_or_else(|| corrupt("_rebuild_parameter without a tensor"))
                }
                _ => {}
            }
        }
        Ok(Value::Call(tuple_of(vec![callable, args])?))
    }

    fn run(&mut self) -> Result<Value, ImportError> {
        loop {
            let opcode = self.byte()?;
            match opcode {
                0x80 => {
                    let protocol = self.byte()?;
                    if protocol > 5 {
                        return Err(ImportError::Unsupported(format!("pickle protocol {protocol}")));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length hint only
                }
                b'.' => {
                    let value = self.pop()?;
                    return Ok(value);
                }
                b'(' => self.stack.push(Value::Mark),
                b'0' => {
                    self.pop()?;
                }
                b'2' => {
                    let value = self.top()?.clone();
                    self.push(value)?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let value = i32::from_le_bytes(self.fixed()?);
                    self.push(Value::Int(value.into()))?;
                }
                b'K' => {
                    let value = self.byte()?;
                    self.push(Value::Int(value.into()))?;
                }
                b'M' => {
                    let value = u16::from_le_bytes(self.fixed()?);
                    self.push(Value::Int(value.into()))?;
                }
                0x8a | 0x8b => {
                    let len = if opcode == 0x8a {
                        usize::from(self.byte()?)
                    } else {
                        self.u32_len()?
                    };
                    let value = long(self.take(len)?)?;
                    self.push(Value::Int(value))?;
                }
                b'I' => {
                    let text = self.line()?;
                    let value = match text.as_str() {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        digits => Value::Int(digits.parse().map_err(|_| corrupt("bad INT"))?),
                    };
                    self.push(value)?;
                }
                b'G' => {
                    let value = f64::from_be_bytes(self.fixed()?);
                    self.push(Value::Float(value))?;
                }
                b'X' => {
                    let len = self.u32_len()?;
                    let text = self.utf8(len)?;
                    self.push(Value::Str(text))?;
                }
                0x8c => {
                    let len = usize::from(self.byte()?);
                    let text = self.utf8(len)?;
                    self.push(Value::Str(text))?;
                }
                0x8d => {
                    let len = self.u64_len()?;
                    let text = self.utf8(len)?;
                    self.push(Value::Str(text))?;
                }
                b'T' | b'B' => {
                    let len = self.u32_len()?;
                    let bytes = self.take(len)?.to_vec();
                    self.push(Value::Bytes(bytes))?;
                }
                b'U' | b'C' => {
                    let len = usize::from(self.byte()?);
                    let bytes = self.take(len)?.to_vec();
                    self.push(Value::Bytes(bytes))?;
                }
                0x8e => {
                    let len = self.u64_len()?;
                    let bytes = self.take(len)?.to_vec();
                    self.push(Value::Bytes(bytes))?;
                }
                b')' => self.push(Value::Tuple(Items::empty()))?,
                b']' => self.push(Value::List(Items::empty()))?,
                b'}' => self.push(Value::Dict(Items::empty()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(tuple_of(items)?))?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(tuple_of(items)?))?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Dict(Items::empty()))?;
                    self.set_items(items)?;
                }
                0x85..=0x87 => {
                    let n = usize::from(opcode - 0x84);
                    if self.stack.len() < n {
                        return Err(corrupt("pickle stack underflow"));
                    }
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(tuple_of(items)?))?;
                }
                b'a' => {
                    let item = self.pop()?;
                    self.append(vec![item])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.set_items(vec![key, value])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?;
                }
                0x93 => {
                    let name = self.pop()?.as_str()?.to_owned();
                    let module = self.pop()?.as_str()?.to_owned();
                    self.global(module, name)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let value = self.reduce(callable, args)?;
                    self.push(value)?;
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args); no torch class is built this way in a state dict.
                    let args = self.pop()?;
                    let class = self.pop()?;
                    self.push(Value::Call(tuple_of(vec![class, args])?))?;
                }
                b'b' => {
                    // BUILD sets an object's state (e.g. a state dict's `_metadata`); the state is not needed.
                    self.pop()?;
                    self.top()?;
                }
                b'Q' => {
                    let id = self.pop()?;
                    self.push(Value::Storage(persistent_load(&id)?))?;
                }
                b'q' => {
                    let index = u32::from(self.byte()?);
                    self.memo_put(index)?;
                }
                b'r' => {
                    let index = u32::from_le_bytes(self.fixed()?);
                    self.memo_put(index)?;
                }
                0x94 => {
                    let index = u32::try_from(self.memo.len()).map_err(|_| corrupt("pickle memo too large"))?;
                    self.memo_put(index)?;
                }
                b'h' => {
                    let index = u32::from(self.byte()?);
                    self.memo_get(index)?;
                }
                b'j' => {
                    let index = u32::from_le_bytes(self.fixed()?);
                    self.memo_get(index)?;
                }
                other => {
                    return Err(ImportError::Unsupported(format!(
                        "pickle opcode 0x{other:02x} at offset {}",
                        self.position - 1
                    )))
                }
            }
        }
    }
}

/// A little-endian two's complement integer of up to 16 bytes.
fn long(bytes: &[u8]) -> Result<i128, ImportError> {
    if bytes.len() > 16 {
        return Err(ImportError::Unsupported(format!("a {}-byte integer", bytes.len())));
    }
    let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
    let mut buffer = [if negative { 0xff } else { 0 }; 16];
    buffer[..bytes.len()].copy_from_slice(bytes);
    Ok(i128::from_le_bytes(buffer))
}

/// torch's persistent id for a storage: `('storage', StorageType, key, location, numel, ...)`.
fn persistent_load(id: &Value) -> Result<StorageRef, ImportError> {
    let fields = id.as_items()?;
    let [kind, storage_type, key, _location, numel, ..] = fields else {
        return Err(corrupt("a persistent id is not a storage tuple"));
    };
    if kind.as_str()? != "storage" {
        return Err(ImportError::Unsupported(format!(
            "persistent id of kind {:?}",
            kind.as_str()?
        )));
    }
    let dtype = match storage_type {
        Value::Global { name, .. } if name == "FloatStorage" => DType::F32,
        Value::Global { name, .. } if name == "LongStorage" => DType::I64,
        Value::Global { module, name } => {
            return Err(ImportError::Unsupported(format!(
                "storage type {module}.{name} (only FloatStorage and LongStorage are read)"
            )))
        }
        other => return Err(corrupt(format!("storage type is a {}", other.type_name()))),
    };
    Ok(StorageRef {
        key: key.as_str()?.to_owned(),
        dtype,
        numel: numel.as_usize()?,
    })
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, ...)`.
fn rebuild_tensor(args: &[Value]) -> Result<TensorRef, ImportError> {
    let [storage, offset, size, stride, ..] = args else {
        return Err(corrupt("_rebuild_tensor_v2 with fewer than 4 arguments"));
    };
    let Value::Storage(storage) = storage else {
        return Err(corrupt(format!(
            "_rebuild_tensor_v2 on a {} instead of a storage",
            storage.type_name()
        )));
    };
    let dims = |v: &Value| v.as_items()?.iter().map(Value::as_usize).collect::<Result<Vec<_>, _>>();
    let (size, stride) = (dims(size)?, dims(stride)?);
    if size.len() != stride.len() {
        return Err(corrupt(format!(
            "tensor size {size:?} and stride {stride:?} differ in rank"
        )));
    }
    Ok(TensorRef {
        storage: storage.clone(),
        offset: offset.as_usize()?,
        size,
        stride,
    })
}
