//! `model.safetensors`, the file `transformers` saves weights in: a JSON
//! header (each tensor's name, dtype, shape and byte range) and then the
//! raw little-endian values. Read into f32 whatever the stored precision
//! (GPT-2's own file is f32; many later uploads are f16 or bf16).

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::{bf16, f16};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::weights::HostTensors;

/// The prefix `GPT2LMHeadModel` puts before its body's tensors (but not
/// before `lm_head.weight`); a bare `GPT2Model`, and OpenAI's original
/// upload, have none.
const BODY: &str = "transformer.";

/// Every tensor of the file, as f32, its name without the body's prefix.
pub fn read(path: &Path) -> Result<HostTensors> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: the file is only read, and not expected to change while it is.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot read {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is not a safetensors file: {e}", path.display()))?;
    let mut out = HostTensors::new();
    for (name, view) in st.tensors() {
        let values = to_f32(&view).with_context(|| format!("{}: tensor {name}", path.display()))?;
        let short = name.strip_prefix(BODY).unwrap_or(&name).to_string();
        if out.insert(short.clone(), (view.shape().to_vec(), values)).is_some() {
            bail!("{}: tensor {short} is there twice (with and without {BODY})", path.display());
        }
    }
    Ok(out)
}

fn to_f32(view: &TensorView) -> Result<Vec<f32>> {
    let data = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => data.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => bail!("is {other:?}, expected F32, F16 or BF16"),
    })
}

/// Writes `tensors` as f32, named as `transformers` names a
/// `GPT2LMHeadModel`'s (the body's prefixed), with the `format` entry
/// `transformers` requires in the header.
pub fn write(path: &Path, tensors: &HostTensors) -> Result<()> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, (shape, values))| {
            let name = if name.starts_with("lm_head.") { name.clone() } else { format!("{BODY}{name}") };
            (name, shape.clone(), values.iter().flat_map(|v| v.to_le_bytes()).collect())
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, data)| Ok((name.as_str(), TensorView::new(Dtype::F32, shape.clone(), data)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let metadata = [("format".to_string(), "pt".to_string())].into_iter().collect();
    safetensors::serialize_to_file(views, Some(metadata), path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}
