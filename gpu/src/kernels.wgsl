// otlens' compute kernels. Every entry point shares one binding layout: its parameters (u32
// words, f32 values as their bits), the tensor it writes, and up to three tensors it reads.
// executor.rs packs the parameters; the word numbers below are its contract.

struct Params {
    words: array<vec4<u32>, 8>,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> output: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> y: array<f32>;
@group(0) @binding(4) var<storage, read> z: array<f32>;

// Kernels read x and y through these. When the adapter has shader-f16, executor.rs stores the
// weights of matrix products and convolutions as f16 and builds a copy of this file that begins
// with `enable f16;` and declares that operand array<f16>; arithmetic stays f32.
fn x_at(i: u32) -> f32 {
    return f32(x[i]);
}

fn y_at(i: u32) -> f32 {
    return f32(y[i]);
}

fn word(i: u32) -> u32 {
    return params.words[i / 4u][i % 4u];
}

fn real(i: u32) -> f32 {
    return bitcast<f32>(word(i));
}

// One thread per output element; a dispatch wider than 65535 workgroups wraps into y.
const LINEAR: u32 = 64u;

fn linear_index(id: vec3<u32>, groups: vec3<u32>) -> u32 {
    return id.x + id.y * groups.x * LINEAR;
}

// The offset of element `i` of a tensor with dims words[at..at+4] (rank 4, leading ones) in
// an operand read with strides words[strides..strides+4].
fn strided(i: u32, dims: u32, strides: u32) -> u32 {
    var rest = i;
    var offset = 0u;
    for (var axis = 3; axis >= 0; axis--) {
        let dim = word(dims + u32(axis));
        offset += (rest % dim) * word(strides + u32(axis));
        rest /= dim;
    }
    return offset;
}

// x^e as tract (Rust's powf) computes it: a negative base keeps its sign under an odd
// integral exponent and has no real power otherwise.
fn power(base: f32, exponent: f32) -> f32 {
    let magnitude = pow(abs(base), exponent);
    if (base >= 0.0) {
        return magnitude;
    }
    if (exponent != trunc(exponent)) {
        // NaN, made at run time (the base is negative): WGSL has no NaN constant.
        return sqrt(base);
    }
    return select(magnitude, -magnitude, (i32(exponent) & 1) == 1);
}

fn unary_op(code: u32, v: f32, a: f32, b: f32) -> f32 {
    switch code {
        case 0u: { return v * v; }
        case 1u: { return sqrt(v); }
        case 2u: { return inverseSqrt(v); }
        case 3u: { return 1.0 / v; }
        case 4u: { return abs(v); }
        case 5u: { return -v; }
        case 6u: { return exp(v); }
        // WGSL's round() breaks ties to even, as tract's round_half_to_even does.
        case 7u: { return round(v); }
        case 8u: { return power(v, a); }
        // An f32 to integer cast saturates (NaN gives 0), as Rust's `as` does.
        case 9u: { return select(clamp(trunc(v), a, b), 0.0, v != v); }
        default: { return select(1.0, 0.0, v == 0.0); }
    }
}

fn binary_op(code: u32, a: f32, b: f32) -> f32 {
    switch code {
        case 0u: { return a + b; }
        case 1u: { return a - b; }
        case 2u: { return a * b; }
        case 3u: { return a / b; }
        case 4u: { return max(a, b); }
        case 5u: { return min(a, b); }
        case 6u: { return power(a, b); }
        case 7u: { return select(0.0, 1.0, a == b); }
        case 8u: { return select(0.0, 1.0, a != b); }
        case 9u: { return select(0.0, 1.0, a < b); }
        case 10u: { return select(0.0, 1.0, a <= b); }
        case 11u: { return select(0.0, 1.0, a > b); }
        default: { return select(0.0, 1.0, a >= b); }
    }
}

// Up to 10 element-wise operations in a row. words: 0 count, 1 number of operations, then three
// words each: the operation (a unary one below 16, else 16 + a binary one with a constant), and
// its two parameters (a unary's; a binary's constant and 1 when the constant comes first).
const WITH_CONSTANT: u32 = 16u;

@compute @workgroup_size(64)
fn pointwise(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear_index(id, groups);
    if (i >= word(0u)) {
        return;
    }
    var v = x_at(i);
    for (var op = 0u; op < word(1u); op++) {
        let at = 2u + 3u * op;
        let code = word(at);
        if (code < WITH_CONSTANT) {
            v = unary_op(code, v, real(at + 1u), real(at + 2u));
        } else if (word(at + 2u) == 1u) {
            v = binary_op(code - WITH_CONSTANT, real(at + 1u), v);
        } else {
            v = binary_op(code - WITH_CONSTANT, v, real(at + 1u));
        }
    }
    output[i] = v;
}

// words: 0 count, 1 op, 2..6 output dims, 6..10 strides of a (x), 10..14 strides of b (y).
@compute @workgroup_size(64)
fn binary(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear_index(id, groups);
    if (i >= word(0u)) {
        return;
    }
    output[i] = binary_op(word(1u), x_at(strided(i, 2u, 6u)), y_at(strided(i, 2u, 10u)));
}

// words: 0 count, 2..6 output dims, 6..10 strides of the condition (x), 10..14 of then (y),
// 14..18 of otherwise (z).
@compute @workgroup_size(64)
fn choose(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear_index(id, groups);
    if (i >= word(0u)) {
        return;
    }
    if (x_at(strided(i, 2u, 6u)) != 0.0) {
        output[i] = y_at(strided(i, 2u, 10u));
    } else {
        output[i] = z[strided(i, 2u, 14u)];
    }
}

// words: 0 count, 1 offset, 2..6 output dims, 6..10 input strides.
@compute @workgroup_size(64)
fn gather(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear_index(id, groups);
    if (i >= word(0u)) {
        return;
    }
    output[i] = x_at(word(1u) + strided(i, 2u, 6u));
}

// words: 0 count, 1 op, 2..6 output dims, 6..10 input strides of the output's axes,
// 10..14 reduced extents (1 where not reduced), 14..18 input strides of the reduced axes,
// 18 number of reduced elements.
@compute @workgroup_size(64)
fn reduce(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear_index(id, groups);
    if (i >= word(0u)) {
        return;
    }
    let base = strided(i, 2u, 6u);
    let op = word(1u);
    let count = word(18u);
    var acc = x_at(base + strided(0u, 10u, 14u));
    for (var r = 1u; r < count; r++) {
        let v = x_at(base + strided(r, 10u, 14u));
        switch op {
            case 2u: { acc = max(acc, v); }
            case 3u: { acc = min(acc, v); }
            default: { acc += v; }
        }
    }
    if (op == 1u) {
        acc /= f32(count);
    }
    output[i] = acc;
}

// Window geometry shared by pooling and convolutions, 13 words from `start` (1 in max_pool and
// conv_direct, 14 in gemm): input channels (per group), input height, input width, output height,
// output width, then pairs (rows, columns): kernel, strides, padding before, dilations.
struct Window {
    start: u32,
    channels: u32,
    height: u32,
    width: u32,
    out_height: u32,
    out_width: u32,
    kernel_h: u32,
    kernel_w: u32,
}

fn window(start: u32) -> Window {
    return Window(
        start,
        word(start),
        word(start + 1u),
        word(start + 2u),
        word(start + 3u),
        word(start + 4u),
        word(start + 5u),
        word(start + 6u),
    );
}

// The input row (or column, `axis` 1) under kernel tap `tap` for output position `at`,
// or -1 in the padding.
fn tap_position(w: Window, at: u32, tap: u32, axis: u32) -> i32 {
    let stride = word(w.start + 7u + axis);
    let padding = word(w.start + 9u + axis);
    let dilation = word(w.start + 11u + axis);
    let position = i32(at * stride + tap * dilation) - i32(padding);
    let size = select(w.width, w.height, axis == 0u);
    return select(-1, position, position >= 0 && position < i32(size));
}

// words: 0 count, then the window.
@compute @workgroup_size(64)
fn max_pool(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear_index(id, groups);
    if (i >= word(0u)) {
        return;
    }
    let w = window(1u);
    let ox = i % w.out_width;
    let oy = (i / w.out_width) % w.out_height;
    let channel = i / (w.out_width * w.out_height);
    // The lowest f32 (browsers refuse an infinite constant); a window always covers a real value.
    var best = bitcast<f32>(0xff7fffffu);
    for (var ky = 0u; ky < w.kernel_h; ky++) {
        let iy = tap_position(w, oy, ky, 0u);
        for (var kx = 0u; kx < w.kernel_w; kx++) {
            let ix = tap_position(w, ox, kx, 1u);
            if (iy >= 0 && ix >= 0) {
                best = max(best, x_at((channel * w.height + u32(iy)) * w.width + u32(ix)));
            }
        }
    }
    output[i] = best;
}

// A fused activation: words[at] 1 to clamp to [words[at + 1], words[at + 2]].
fn activate(value: f32, at: u32) -> f32 {
    if (word(at) == 1u) {
        return min(max(value, real(at + 1u)), real(at + 2u));
    }
    return value;
}

fn bias(channel: u32, mode: u32) -> f32 {
    switch mode {
        case 1u: { return z[0]; }
        case 2u: { return z[channel]; }
        default: { return 0.0; }
    }
}

// Direct convolution, one thread per output value: for depthwise and other convolutions with
// few input channels per group, where a matrix product would be mostly padding.
// words: 0 count, the window, 14 output channels, 15 input channels per group,
// 16 output channels per group, 17 bias mode (0 none, 1 one value, 2 one per channel), 18..21 the
// activation.
// x input, y weights (OIHW), z bias.
@compute @workgroup_size(64)
fn conv_direct(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear_index(id, groups);
    if (i >= word(0u)) {
        return;
    }
    let w = window(1u);
    let kernel_h = w.kernel_h;
    let kernel_w = w.kernel_w;
    let per_group = word(15u);
    let ox = i % w.out_width;
    let oy = (i / w.out_width) % w.out_height;
    let channel = i / (w.out_width * w.out_height);
    let first_input = (channel / word(16u)) * per_group;
    var acc = bias(channel, word(17u));
    for (var c = 0u; c < per_group; c++) {
        for (var ky = 0u; ky < kernel_h; ky++) {
            let iy = tap_position(w, oy, ky, 0u);
            if (iy < 0) {
                continue;
            }
            for (var kx = 0u; kx < kernel_w; kx++) {
                let ix = tap_position(w, ox, kx, 1u);
                if (ix >= 0) {
                    let value = x_at(((first_input + c) * w.height + u32(iy)) * w.width + u32(ix));
                    acc += value * y_at(((channel * per_group + c) * kernel_h + ky) * kernel_w + kx);
                }
            }
        }
    }
    output[i] = activate(acc, 18u);
}

// Tiled matrix product, a 16x16 output tile per workgroup, operands staged through workgroup
// memory 16 columns of k at a time. Workgroup (x, y, z) = (column tile, row tile, batch).
// words: 0 mode (0 strided matrices, 1 convolution as an implicit im2col product), 1 M,
// 2 N, 3 K, 4..7 strides of a (row, column, batch), 7..10 of b, 10..13 of the output,
// 13 bias mode (per row), 14..27 a convolution's window, 27 the bias's stride per batch, 28..31
// the activation. In convolution mode a is the weights, b the input seen through the window and
// the batch is the group.
const TILE: u32 = 16u;
var<workgroup> tile_a: array<array<f32, 16>, 16>;
var<workgroup> tile_b: array<array<f32, 16>, 16>;

fn im2col(k: u32, n: u32, group: u32) -> f32 {
    let w = window(14u);
    let c = k / (w.kernel_h * w.kernel_w);
    let ky = (k / w.kernel_w) % w.kernel_h;
    let kx = k % w.kernel_w;
    let iy = tap_position(w, n / w.out_width, ky, 0u);
    let ix = tap_position(w, n % w.out_width, kx, 1u);
    if (iy < 0 || ix < 0) {
        return 0.0;
    }
    return y_at(((group * w.channels + c) * w.height + u32(iy)) * w.width + u32(ix));
}

@compute @workgroup_size(16, 16)
fn gemm(@builtin(local_invocation_id) local: vec3<u32>, @builtin(workgroup_id) group: vec3<u32>) {
    let m_size = word(1u);
    let n_size = word(2u);
    let k_size = word(3u);
    let conv = word(0u) == 1u;
    let row = group.y * TILE + local.y;
    let column = group.x * TILE + local.x;
    let batch = group.z;
    var acc = 0.0;
    for (var k0 = 0u; k0 < k_size; k0 += TILE) {
        let ka = k0 + local.x;
        var a = 0.0;
        if (row < m_size && ka < k_size) {
            a = x_at(row * word(4u) + ka * word(5u) + batch * word(6u));
        }
        tile_a[local.y][local.x] = a;
        let kb = k0 + local.y;
        var b = 0.0;
        if (column < n_size && kb < k_size) {
            if (conv) {
                b = im2col(kb, column, batch);
            } else {
                b = y_at(kb * word(7u) + column * word(8u) + batch * word(9u));
            }
        }
        tile_b[local.y][local.x] = b;
        workgroupBarrier();
        for (var kk = 0u; kk < TILE; kk++) {
            acc += tile_a[local.y][kk] * tile_b[kk][local.x];
        }
        workgroupBarrier();
    }
    if (row < m_size && column < n_size) {
        let value = acc + bias(batch * word(27u) + row, word(13u));
        output[row * word(10u) + column * word(11u) + batch * word(12u)] = activate(value, 28u);
    }
}
