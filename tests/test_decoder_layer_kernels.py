"""The decoder layer's fused kernels (``rms_norm``, ``silu_mul``, ``rotary_to_cache``) against their
references, which are themselves checked against the Hugging Face modules they restate."""

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

from genssd_kernels.reference import decoder_layer as reference
from genssd_kernels.testing import assert_within_tolerance

triton_layer = pytest.importorskip("genssd_kernels.triton.decoder_layer")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# The kernels run on CUDA where there is one, else in the interpreter on CPU (conftest).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _randn(*shape, dtype=torch.float64, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def test_reference_rms_norm_is_the_hf_module():
    x = _randn(5, 24, dtype=torch.bfloat16, seed=1)
    module = LlamaRMSNorm(24, eps=1e-5).to(torch.bfloat16)
    module.weight.data = _randn(24, dtype=torch.bfloat16, seed=2)
    residual = _randn(5, 24, dtype=torch.bfloat16, seed=3)
    normed, summed = reference.rms_norm(x, module.weight, 1e-5, residual)
    assert torch.equal(summed, x + residual)
    assert torch.equal(normed, module(x + residual))


def test_reference_rotary_is_hf_apply_rotary_pos_emb():
    batch, length, q_heads, kv_heads, dim = 2, 3, 4, 2, 8
    q = _randn(batch, length, q_heads, dim, seed=1)
    k, v = _randn(batch, length, kv_heads, dim, seed=2), _randn(batch, length, kv_heads, dim, seed=3)
    cos, sin = _randn(batch, length, dim, seed=4), _randn(batch, length, dim, seed=5)
    keys, values = (
        torch.zeros(3, kv_heads, 9, dim, dtype=torch.float64),
        torch.zeros(3, kv_heads, 9, dim, dtype=torch.float64),
    )
    lengths = torch.tensor([2, 6, 0])
    q_rot = reference.rotary_to_cache(q, k, v, cos, sin, keys, values, lengths)
    hf_q, hf_k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    assert torch.equal(q_rot, hf_q.transpose(1, 2))
    for b in range(batch):
        columns = slice(int(lengths[b]), int(lengths[b]) + length)
        assert torch.equal(keys[b, :, columns], hf_k[b])
        assert torch.equal(values[b, :, columns], v[b].transpose(0, 1))
    assert not keys[2].any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 24), (1, 5), (33, 130)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_reference(dtype, shape, with_residual):
    x64, w64 = _randn(*shape, seed=1, scale=3.0), _randn(shape[-1], seed=2)
    r64 = _randn(*shape, seed=3) if with_residual else None

    def cast(t):
        return None if t is None else t.to(dtype)

    def on_device(t):
        return None if t is None else t.to(DEVICE)

    normed, summed = triton_layer.rms_norm(
        *map(on_device, (cast(x64), cast(w64))), 1e-6, on_device(cast(r64))
    )
    same_normed, same_summed = reference.rms_norm(cast(x64), cast(w64), 1e-6, cast(r64))
    truth_normed, truth_summed = reference.rms_norm(x64, w64, 1e-6, r64)
    assert torch.equal(summed.cpu(), same_summed)
    assert_within_tolerance(normed, same_normed, truth_normed, dtype, "normed")
    assert_within_tolerance(summed, same_summed, truth_summed, dtype, "summed")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 2, 40), (1, 1, 7), (5, 1100)])
def test_silu_mul_matches_reference(dtype, shape):
    gate64, up64 = _randn(*shape, seed=1, scale=4.0), _randn(*shape, seed=2)
    out = triton_layer.silu_mul(gate64.to(DEVICE, dtype), up64.to(DEVICE, dtype))
    same = reference.silu_mul(gate64.to(dtype), up64.to(dtype))
    assert_within_tolerance(out, same, reference.silu_mul(gate64, up64), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "batch,length,q_heads,kv_heads,dim",
    [(3, 1, 4, 2, 8), (2, 5, 6, 1, 16), (1, 3, 3, 3, 6), (4, 2, 8, 2, 64)],
)
def test_rotary_to_cache_matches_reference(dtype, batch, length, q_heads, kv_heads, dim):
    rows, capacity = batch + 1, 12
    # q, k, v as strided views of one projection output, as the engine passes them
    qkv = _randn(batch, length, (q_heads + 2 * kv_heads) * dim, seed=1)
    q64 = qkv[..., : q_heads * dim].view(batch, length, q_heads, dim)
    k64 = qkv[..., q_heads * dim : (q_heads + kv_heads) * dim].view(batch, length, kv_heads, dim)
    v64 = qkv[..., (q_heads + kv_heads) * dim :].view(batch, length, kv_heads, dim)
    cos64, sin64 = _randn(batch, length, dim, seed=2), _randn(batch, length, dim, seed=3)
    lengths = torch.randint(0, capacity - length + 1, (rows,), generator=torch.Generator().manual_seed(4))
    fill = _randn(rows, kv_heads, capacity, dim, seed=5)

    def run(fn, dt, device="cpu"):
        keys, values = fill.to(device, dt).clone(), (fill.to(device, dt) * 2).clone()
        cast = [t.to(device, dt) for t in (q64, k64, v64, cos64, sin64)]
        return fn(*cast, keys, values, lengths.to(device)), keys, values

    out, keys, values = (t.cpu() for t in run(triton_layer.rotary_to_cache, dtype, DEVICE))
    same = run(reference.rotary_to_cache, dtype)
    truth = run(reference.rotary_to_cache, torch.float64)
    for name, got, ref, tru in zip(("q", "keys", "values"), (out, keys, values), same, truth):
        assert_within_tolerance(got, ref, tru, dtype, name)
    assert torch.equal(values, same[2])  # V is copied, not computed


def test_validation_errors():
    x = torch.randn(3, 8, device=DEVICE)
    with pytest.raises(ValueError, match="weight must be"):
        triton_layer.rms_norm(x, torch.randn(7), 1e-6)
    with pytest.raises(ValueError, match="float64"):
        triton_layer.rms_norm(x.double(), torch.randn(8).double(), 1e-6)
    with pytest.raises(ValueError, match="gate .* and up .* differ"):
        triton_layer.silu_mul(x, torch.randn(3, 9))
    q, k = torch.randn(1, 1, 2, 4), torch.randn(1, 1, 1, 4)
    cache = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="cos/sin"):
        triton_layer.rotary_to_cache(
            q,
            k,
            k,
            torch.randn(1, 1, 3),
            torch.randn(1, 1, 3),
            cache,
            cache.clone(),
            torch.zeros(1, dtype=torch.long),
        )
