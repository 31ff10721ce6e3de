//! Int8 weights inside a compiled model.
//!
//! tract folds `DequantizeLinear` into f32 constants before it writes NNEF, which would
//! quadruple the download of an int8-weight model. So the compiler stores each f32 weight
//! that is exactly int8 codes times one scale per slice as a `<name>.q8` entry (the codes,
//! then the scales, each an NNEF tensor file) instead of `<name>.dat`, and
//! [`read_int8_weights`] gives tract back the same f32 tensor, bit for bit.

use tract_nnef::internal::*;
use tract_nnef::tensors::read_tensor;

/// File extension of an int8-stored weight in a compiled model's tar.
pub const Q8_EXTENSION: &str = "q8";

/// Reads one `.q8` entry back into its f32 tensor.
pub fn read_int8_weights(reader: &mut dyn std::io::Read) -> TractResult<Tensor> {
    let codes = read_tensor(&mut *reader).context("reading the codes")?;
    let scales = read_tensor(&mut *reader).context("reading the scales")?;
    dequantise(&codes, &scales)
}

/// `codes as f32 * scales`, `scales` broadcasting along the codes' axes.
fn dequantise(codes: &Tensor, scales: &Tensor) -> TractResult<Tensor> {
    let codes = codes.to_plain_array_view::<i8>().context("the codes are not int8")?;
    let scales = scales.to_plain_array_view::<f32>().context("the scales are not f32")?;
    let scales = scales.broadcast(codes.shape()).with_context(|| {
        format!(
            "scales of shape {:?} for codes of shape {:?}",
            scales.shape(),
            codes.shape()
        )
    })?;
    let weights = tract_ndarray::Zip::from(&codes)
        .and(&scales)
        .map_collect(|&code, &scale| code as f32 * scale);
    Ok(weights.into_tensor())
}

/// `tensor` as int8 codes and f32 scales (one per slice along some axis, shaped to
/// broadcast), when `codes as f32 * scale` gives back every value exactly.
#[cfg(not(target_arch = "wasm32"))]
pub fn as_int8(tensor: &Tensor) -> Option<(Tensor, Tensor)> {
    let values = tensor.to_plain_array_view::<f32>().ok()?;
    for axis in 0..values.ndim() {
        let scales: Option<Vec<f32>> = values
            .axis_iter(tract_ndarray::Axis(axis))
            .map(|slice| slice_scale(slice.iter().copied()))
            .collect();
        let Some(scales) = scales else {
            continue;
        };
        let mut scale_shape = vec![1; values.ndim()];
        scale_shape[axis] = scales.len();
        let codes = tract_ndarray::Array::from_shape_fn(values.raw_dim(), |index| {
            (values[&index] / scales[index[axis]]).round() as i8
        });
        let scales = Tensor::from_shape(&scale_shape, &scales).ok()?;
        return Some((codes.into_tensor(), scales));
    }
    None
}

/// The scale that makes every value an exact multiple in [-127, 127], if there is one.
/// Symmetric int8 maps the largest magnitude to 127, but `127 * scale` rounded to f32 and
/// divided back may miss the importer's scale by an ulp or two: try those too.
#[cfg(not(target_arch = "wasm32"))]
fn slice_scale(values: impl Iterator<Item = f32> + Clone) -> Option<f32> {
    let largest = values.clone().map(f32::abs).fold(0.0, f32::max);
    if largest == 0.0 {
        return Some(1.0);
    }
    let exact = |scale: f32| {
        values.clone().all(|value| {
            let code = (value / scale).round();
            code.abs() <= 127.0 && code * scale == value
        })
    };
    let guess = largest / 127.0;
    let (mut up, mut down) = (guess, guess);
    for _ in 0..3 {
        if exact(up) {
            return Some(up);
        }
        if exact(down) {
            return Some(down);
        }
        up = up.next_up();
        down = down.next_down();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_times_scales_comes_back_bit_for_bit() {
        // Three output channels (axis 1) with their own scales, one all zero. Symmetric int8
        // maps each channel's largest magnitude to 127 (here the first value).
        let scales = [0.013_7_f32, 0.002_1, 1.0];
        let values: Vec<f32> = (0..2 * 3 * 4)
            .map(|i| {
                let channel = (i / 4) % 3;
                let code = match (channel, i < 12 && i % 4 == 0) {
                    (2, _) => 0,
                    (_, true) => -127,
                    _ => (i as i32 * 37 % 255) - 127,
                };
                code as f32 * scales[channel]
            })
            .collect();
        let tensor = Tensor::from_shape(&[2, 3, 4], &values).unwrap();
        let (codes, found) = as_int8(&tensor).expect("the tensor is int8 x scales");
        assert_eq!(codes.datum_type(), i8::datum_type());
        assert_eq!(found.shape(), &[1, 3, 1]);
        let back = dequantise(&codes, &found).unwrap();
        assert_eq!(
            back.to_plain_array_view::<f32>().unwrap().as_slice().unwrap(),
            values.as_slice()
        );
    }

    #[test]
    fn weights_that_are_not_int8_stay_f32() {
        let tensor = Tensor::from_shape(&[2, 2], &[0.1f32, 0.2, 0.3, 0.123_456_7]).unwrap();
        assert!(as_int8(&tensor).is_none());
    }

    #[test]
    fn mismatched_codes_and_scales_are_refused() {
        let codes = Tensor::from_shape(&[2, 3], &[1i8, 2, 3, 4, 5, 6]).unwrap();
        let scales = Tensor::from_shape(&[1, 2], &[1f32, 2.0]).unwrap();
        let error = dequantise(&codes, &scales).unwrap_err().to_string();
        assert!(
            error.contains("scales of shape [1, 2] for codes of shape [2, 3]"),
            "{error}"
        );
        let error = dequantise(&scales, &scales).unwrap_err().to_string();
        assert!(error.contains("the codes are not int8"), "{error}");
    }
}
