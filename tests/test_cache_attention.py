"""``cache_attention``: the Triton kernel against its PyTorch reference, the reference against SDPA.

The kernel's output must satisfy the docs/design.md §2.3 rule against the reference run in float64:
``err <= 2 * err(reference in the input dtype) + floor[dtype]``. The reference itself is checked in
float64 against ``F.scaled_dot_product_attention`` with an explicit boolean mask and K/V repeated
per query head. Shapes stay small because the Triton interpreter runs these on CPU-only machines.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES

from genssd_kernels import testing
from genssd_kernels.dispatch import unavailable_reason
from genssd_kernels.reference import cache_attention as reference

triton_attention = pytest.importorskip("genssd_kernels.triton.cache_attention")

TRITON_DEVICES = [d for d in DEVICES if unavailable_reason("triton", torch.device(d)) is None]
DTYPES = [pytest.param(dtype, id=str(dtype).removeprefix("torch.")) for dtype in testing.ERROR_FLOOR]

# (B, L, Hq, Hkv, D, R, C, span, window, scale factor over D**-0.5, strided layouts)
SHAPES = {
    "decode-G2-D8": (3, 1, 4, 2, 8, 5, 40, 33, None, 1.0, False),
    "decode-G7-D64-window": (3, 1, 14, 2, 64, 3, 64, 64, 17, 1.0, True),
    "L5-G6-D24-window": (3, 5, 6, 1, 24, 4, 50, 41, 7, 2.5, True),
    "L37-G1-D16": (2, 37, 2, 2, 16, 3, 90, 80, None, 1.0, False),
    # Window 3: with the interpreter's tiles a row tile's later queries see nothing in its first column step.
    "L37-G1-D16-window3": (3, 37, 2, 2, 16, 3, 90, 75, 3, 1.0, True),
    "L37-G2-D16-window": (3, 37, 4, 2, 16, 4, 100, 70, 20, 1.0, False),
    # 231 query rows a KV head: row tiles end inside a query's group of heads.
    "L33-G7-D32": (2, 33, 7, 1, 32, 2, 64, 50, None, 1.0, True),
    # A window as wide as the span hides nothing.
    "L5-G4-D4-wide-window": (2, 5, 8, 2, 4, 2, 24, 24, 100, 1.0, False),
    "decode-G3-D80": (2, 1, 6, 2, 80, 3, 30, 29, None, 3.0, True),
}


def _seed(*parts) -> int:
    """A stable per-case seed, so every parametrization draws its own data."""
    return sum((i + 1) * sum(map(ord, str(p))) for i, p in enumerate(parts)) % 100_000


def _lengths(batch, rows, length, span, seed):
    """``[R]`` int64: distinct per-row lengths in ``[0, span - L]``, 0 and ``span - L`` among them;
    rows past ``B`` hold lengths far out of range, which must never be read."""
    gen = torch.Generator().manual_seed(seed)
    top = span - length
    middle = torch.randperm(top - 1, generator=gen)[: batch - 2] + 1
    lengths = torch.cat([torch.tensor([0, top]), middle])[torch.randperm(batch, generator=gen)]
    return torch.cat([lengths, torch.full((rows - batch,), 10**6)])


def _inputs(shape, dtype, device, seed):
    """Random ``q [B, L, Hq, D]``, ``keys, values [R, Hkv, C, D]`` (never zero) and ``lengths``.

    With ``strided``, q is a transposed view of ``[B, Hq, L, D]`` (as after the rotary embedding)
    and the caches are views of ``[R, C, Hkv, D]`` buffers.
    """
    batch, length, q_heads, kv_heads, dim, rows, capacity, span, _, _, strided = shape
    gen = torch.Generator().manual_seed(seed)

    def randn(*size):
        return torch.randn(*size, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)

    if strided:
        q = randn(batch, q_heads, length, dim).transpose(1, 2)
        keys = randn(rows, capacity, kv_heads, dim).transpose(1, 2)
        values = randn(rows, capacity, kv_heads, dim).transpose(1, 2)
    else:
        q = randn(batch, length, q_heads, dim)
        keys = randn(rows, kv_heads, capacity, dim)
        values = randn(rows, kv_heads, capacity, dim)
    return q, keys, values, _lengths(batch, rows, length, span, seed).to(device)


def _arguments(shape):
    *_, dim, _, _, span, window, factor, _ = shape
    return dict(span=span, scale=factor * dim**-0.5, window=window)


def _sdpa_truth(q, keys, values, lengths, *, span, scale, window):
    """Float64 attention through SDPA, one cache row at a time, with K/V repeated per query head
    and the boolean mask written out element by element from the contract."""
    batch, length, q_heads, _ = q.shape
    groups = q_heads // keys.shape[1]
    out = torch.empty_like(q)
    for b in range(batch):
        mask = torch.zeros(length, span, dtype=torch.bool)
        for query in range(length):
            position = int(lengths[b]) + query
            for column in range(span):
                mask[query, column] = column <= position and (window is None or column > position - window)
        k = keys[b, :, :span].repeat_interleave(groups, dim=0)  # [Hq, S, D]
        v = values[b, :, :span].repeat_interleave(groups, dim=0)
        attended = F.scaled_dot_product_attention(q[b].transpose(0, 1), k, v, attn_mask=mask, scale=scale)
        out[b] = attended.transpose(0, 1)
    return out


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_reference_matches_sdpa_in_float64(shape):
    q, keys, values, lengths = _inputs(shape, torch.float64, "cpu", _seed("sdpa", shape))
    out = reference(q, keys, values, lengths, **_arguments(shape))
    assert out.shape == q.shape and out.is_contiguous() and out.dtype == torch.float64
    torch.testing.assert_close(
        out, _sdpa_truth(q, keys, values, lengths, **_arguments(shape)), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_triton_matches_reference(device, dtype, shape):
    q, keys, values, lengths = _inputs(shape, dtype, device, _seed("triton", shape, dtype))
    arguments = _arguments(shape)
    out = triton_attention.cache_attention(q, keys, values, lengths, **arguments)
    assert out.shape == q.shape and out.dtype == dtype and out.device == q.device and out.is_contiguous()
    same_dtype = reference(q, keys, values, lengths, **arguments)
    truth = reference(q.double(), keys.double(), values.double(), lengths, **arguments)
    testing.assert_within_tolerance(out, same_dtype, truth, dtype, what="cache_attention")


def _poison(keys, values, lengths, batch, length, window):
    """Copies of the caches with every column no query of a row sees overwritten: NaN past each
    row's last position (and in the rows past ``B``), the dtype's largest value before its first
    query's window."""
    keys, values = keys.clone(), values.clone()
    huge = torch.finfo(keys.dtype).max
    for cache in (keys, values):
        cache[batch:] = float("nan")
        for b in range(batch):
            first = int(lengths[b])
            cache[b, :, first + length :] = float("nan")
            if window is not None and first - window >= 0:
                cache[b, :, : first - window + 1] = huge
    return keys, values


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize(
    "name", ["decode-G7-D64-window", "L5-G6-D24-window", "L37-G1-D16-window3", "L37-G2-D16-window"]
)
def test_unseen_columns_do_not_matter(name, dtype, device):
    shape = SHAPES[name]
    batch, length, window = shape[0], shape[1], shape[8]
    arguments = _arguments(shape)
    q, keys, values, lengths = _inputs(shape, dtype, device, _seed("poison", name, dtype))
    poisoned = _poison(keys, values, lengths, batch, length, window)
    assert poisoned[0].isnan().any() and not poisoned[0][:batch, :, : arguments["span"]].isnan().all()
    functions = [reference] + [triton_attention.cache_attention] * (device in TRITON_DEVICES)
    for function in functions:
        clean = function(q, keys, values, lengths, **arguments)
        dirty = function(q, *poisoned, lengths, **arguments)
        assert torch.equal(clean, dirty), function.__module__


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("batch,length", [(0, 3), (2, 0)])
def test_empty_batch_or_no_new_tokens(device, batch, length):
    q = torch.randn(batch, length, 4, 8, device=device)
    keys = torch.randn(3, 2, 10, 8, device=device)
    lengths = torch.zeros(3, dtype=torch.int64, device=device)
    out = triton_attention.cache_attention(q, keys, keys, lengths, span=5, scale=0.3)
    assert out.shape == (batch, length, 4, 8)


def _valid_arguments():
    """Small valid arguments of ``cache_attention``: B=2, L=3, Hq=4, Hkv=2, D=8, R=3, C=10."""
    return dict(
        q=torch.randn(2, 3, 4, 8),
        keys=torch.randn(3, 2, 10, 8),
        values=torch.randn(3, 2, 10, 8),
        lengths=torch.tensor([0, 4, 9]),
        span=8,
        scale=0.35,
        window=None,
    )


BAD_ARGUMENTS = {
    "q-3d": (dict(q=torch.randn(2, 3, 32)), "q must be 4-D"),
    "keys-3d": (dict(keys=torch.randn(3, 20, 8)), "keys must be 4-D"),
    "values-shape": (dict(values=torch.randn(3, 2, 9, 8)), "values must have the shape of keys"),
    "head-size": (dict(keys=torch.randn(3, 2, 10, 6), values=torch.randn(3, 2, 10, 6)), "keys have D=6"),
    "heads": (dict(keys=torch.randn(3, 3, 10, 8), values=torch.randn(3, 3, 10, 8)), r"Hq % Hkv == 0"),
    "rows": (dict(q=torch.randn(4, 3, 4, 8)), "keys hold only R=3"),
    "keys-dtype": (dict(keys=torch.randn(3, 2, 10, 8, dtype=torch.float16)), "keys dtype"),
    "values-dtype": (dict(values=torch.randn(3, 2, 10, 8, dtype=torch.bfloat16)), "values dtype"),
    "keys-device": (dict(keys=torch.empty(3, 2, 10, 8, device="meta")), "keys is on meta"),
    "lengths-2d": (dict(lengths=torch.zeros(3, 1, dtype=torch.int64)), "lengths must be 1-D"),
    "lengths-short": (dict(lengths=torch.zeros(1, dtype=torch.int64)), "lengths has 1 entries"),
    "lengths-float": (dict(lengths=torch.zeros(3)), "lengths must be int64"),
    "span-past-capacity": (dict(span=11), "span must satisfy"),
    "span-below-L": (dict(span=2), "span must satisfy"),
    "span-float": (dict(span=8.0), "span must be an int"),
    "scale-nan": (dict(scale=float("nan")), "scale must be a finite float"),
    "window-zero": (dict(window=0), "window must be None or an int >= 1"),
    "window-bool": (dict(window=True), "window must be None or an int >= 1"),
    "window-float": (dict(window=4.0), "window must be None or an int >= 1"),
}


@pytest.mark.parametrize("change,match", list(BAD_ARGUMENTS.values()), ids=list(BAD_ARGUMENTS))
def test_invalid_arguments_raise(change, match):
    arguments = {**_valid_arguments(), **change}
    for function in (reference, triton_attention.cache_attention):
        with pytest.raises(ValueError, match=match):
            function(**arguments)


def test_triton_rejects_float64():
    arguments = _valid_arguments()
    for name in ("q", "keys", "values"):
        arguments[name] = arguments[name].double()
    with pytest.raises(ValueError, match="fp16/bf16/fp32 q"):
        triton_attention.cache_attention(**arguments)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_cuda_graph_capture_follows_new_lengths(dtype):
    """A captured call reads ``lengths`` on the device: replays after the lengths change give what
    an eager call gives."""
    shape = (4, 1, 8, 1, 128, 6, 300, 256, None, 1.0, False)
    q, keys, values, lengths = _inputs(shape, dtype, "cuda", seed=7)
    arguments = _arguments(shape)
    triton_attention.cache_attention(q, keys, values, lengths, **arguments)  # compile outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = triton_attention.cache_attention(q, keys, values, lengths, **arguments)
    for new_lengths in ([0, 17, 200, 255], [255, 1, 64, 128]):
        lengths[:4] = torch.tensor(new_lengths, device="cuda")
        graph.replay()
        torch.testing.assert_close(
            captured, triton_attention.cache_attention(q, keys, values, lengths, **arguments), rtol=0, atol=0
        )


@pytest.mark.cuda
@pytest.mark.parametrize(
    "shape",
    [
        # The engine's decode step: 256 rows, 28 query heads on 4 KV heads, up to ~1k columns.
        (256, 1, 28, 4, 128, 256, 1100, 1024, None, 1.0, False),
        (256, 1, 32, 8, 64, 300, 1024, 1024, 256, 1.0, True),
        # A prefill and a chunk forward.
        (4, 300, 16, 2, 64, 4, 512, 400, None, 1.0, True),
        (64, 33, 14, 2, 128, 64, 600, 520, 128, 1.0, False),
    ],
    ids=["decode-G7", "decode-G4-window", "prefill-300", "chunk-33"],
)
def test_cuda_engine_sized_shapes(shape):
    q, keys, values, lengths = _inputs(shape, torch.bfloat16, "cuda", _seed("engine", shape))
    arguments = _arguments(shape)
    out = triton_attention.cache_attention(q, keys, values, lengths, **arguments)
    same_dtype = reference(q, keys, values, lengths, **arguments)
    truth = reference(q.double(), keys.double(), values.double(), lengths, **arguments)
    testing.assert_within_tolerance(out, same_dtype, truth, torch.bfloat16, what="cache_attention")
