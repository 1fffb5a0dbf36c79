"""Triton ``keyed_sample`` against the torch path of ``genssd.sampling``, token for token.

The reference is ``sample(logits.float().masked_fill(banned, -inf), step_keys(keys, step),
temperature=T)`` on the same device: the CUDA device where there is one, else the CPU, where the
kernel runs in the Triton interpreter (the module docstring of ``keyed_sample`` says where the
interpreter's log may differ from torch's CPU log by an ulp, which no case here hits).
"""

import pytest
import torch
from genssd.sampling import sample, step_keys, uniform

from genssd_kernels.triton.keyed_sample import keyed_sample

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INF = float("inf")


def _reference(logits, keys, step, temperature, banned=None):
    x = logits.float()
    if banned is not None:
        x = x.masked_fill(banned, -INF)
    return sample(x, step_keys(keys, step), temperature=temperature)


def _inputs(rows, width, *, seed, dtype=torch.float32, scale=3.0):
    """Random ``[rows, width]`` logits of ``dtype`` (normal, never all zeros) and ``[rows]`` keys."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, width, generator=gen) * scale).to(dtype)
    keys = torch.randint(-(2**63), 2**63 - 1, (rows,), generator=gen, dtype=torch.int64)
    return logits.to(DEVICE), keys.to(DEVICE), gen


def _random_banned(width, gen, fraction=0.3):
    return (torch.rand(width, generator=gen) < fraction).to(DEVICE)


# R = 1, 3, 17 and V = 33 (under one tile), 1000 and 5003 (several tiles, several splits in the
# interpreter; V = 5003 is several 1024-wide tiles on a GPU too).
SHAPES = [(1, 33), (3, 1000), (17, 5003)]


@pytest.mark.parametrize("rows,width", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.3])
def test_matches_torch_path_with_banned_ids(rows, width, dtype, temperature):
    logits, keys, gen = _inputs(rows, width, seed=rows * 7919 + width, dtype=dtype)
    banned = _random_banned(width, gen)
    got = keyed_sample(logits, keys, 11, temperature=temperature, banned=banned)
    assert got.dtype == torch.int64 and got.shape == (rows,)
    assert torch.equal(got, _reference(logits, keys, 11, temperature, banned))
    assert not banned[got].any()


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.3])
def test_matches_torch_path_without_banned_fp16_strided(temperature):
    # Rows of a wider buffer (row stride 1200 > V) and keys with a stride: no copy is needed.
    base, keys, _ = _inputs(9, 1200, seed=5, dtype=torch.float16)
    logits = base[:, 100:1100]
    keys = torch.stack([keys, keys + 1], dim=1)[:, 0]
    assert logits.stride(0) == 1200 and keys.stride(0) == 2
    got = keyed_sample(logits, keys, 3, temperature=temperature)
    assert torch.equal(got, _reference(logits, keys, 3, temperature))


def test_step_as_int_and_as_tensor():
    logits, keys, _ = _inputs(6, 700, seed=2)
    for step in (0, 1, 37, 2**40 + 3, -5):
        as_int = keyed_sample(logits, keys, step, temperature=1.0)
        as_tensor = keyed_sample(
            logits, keys, torch.tensor([step], dtype=torch.int64, device=DEVICE), temperature=1.0
        )
        assert torch.equal(as_int, as_tensor)
        assert torch.equal(as_int, _reference(logits, keys, step, 1.0))
    # Flat logits: the step alone decides, so different steps draw different tokens.
    flat = torch.zeros(6, 700, device=DEVICE)
    draws = {tuple(keyed_sample(flat, keys, step, temperature=1.0).tolist()) for step in range(4)}
    assert len(draws) == 4


def test_hash_orders_tokens_as_uniform():
    """With zero logits at T = 1 the perturbed score is exactly the Gumbel noise, an increasing
    function of ``u = uniform(step_keys(keys, step), V)``: banning each drawn token in turn must
    list the tokens by decreasing ``u``, the lower index first among equal ``u``."""
    width, step = 40, 6
    keys = torch.tensor([123456789, -(2**62) + 17], dtype=torch.int64, device=DEVICE)
    u = uniform(step_keys(keys, step), width)
    for row in range(2):
        logits = torch.zeros(1, width, device=DEVICE)
        banned = torch.zeros(width, dtype=torch.bool, device=DEVICE)
        order = []
        for _ in range(width):
            token = keyed_sample(logits, keys[row : row + 1], step, temperature=1.0, banned=banned)
            order.append(token.item())
            banned[token] = True
        expected = sorted(range(width), key=lambda v: (-u[row, v].item(), v))
        assert order == expected


def test_first_draw_is_the_argmax_of_uniform_on_many_rows():
    rows, width, step = 64, 777, 2**33 + 1
    keys = torch.randint(-(2**63), 2**63 - 1, (rows,), generator=torch.Generator().manual_seed(9))
    keys = keys.to(DEVICE)
    got = keyed_sample(torch.zeros(rows, width, device=DEVICE), keys, step, temperature=1.0)
    assert torch.equal(got, uniform(step_keys(keys, step), width).argmax(dim=1))


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_single_finite_logit_is_always_drawn(temperature, dtype):
    rows, width = 12, 1500
    gen = torch.Generator().manual_seed(4)
    survivor = torch.randint(0, width, (rows,), generator=gen)
    survivor[:3] = torch.tensor([0, width - 1, 1023])  # the edges of the row and of a GPU tile
    logits = torch.full((rows, width), -INF)
    logits[torch.arange(rows), survivor] = torch.randn(rows, generator=gen) * 50
    keys = torch.randint(-(2**63), 2**63 - 1, (rows,), generator=gen)
    for step in range(3):
        got = keyed_sample(logits.to(dtype).to(DEVICE), keys.to(DEVICE), step, temperature=temperature)
        assert got.cpu().tolist() == survivor.tolist()


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_all_but_a_few_ids_banned(temperature):
    logits, keys, _ = _inputs(17, 5003, seed=8)
    allowed = torch.tensor([7, 2500, 5002], device=DEVICE)
    banned = torch.ones(5003, dtype=torch.bool, device=DEVICE)
    banned[allowed] = False
    got = keyed_sample(logits, keys, 2, temperature=temperature, banned=banned)
    assert torch.isin(got, allowed).all()
    assert torch.equal(got, _reference(logits, keys, 2, temperature, banned))


# 3e38 / 0.7 overflows to inf, as in torch; numpy says so in the interpreter.
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.3])
def test_huge_logits_ties_and_overflow(temperature):
    """1e4 (noise still matters), 1e30 (noise below an ulp: ties go to the first index) and 3e38
    (overflows to inf at T < 1; several infs tie), with repeated maxima and -inf rows."""
    logits, keys, gen = _inputs(8, 1000, seed=12)
    logits[0] *= 1e4
    logits[1] = logits[1].sign() * 1e30
    logits[2] = torch.where(logits[2] > 0, 3e38, -3e38)
    logits[3, 100:900:7] = 50.0  # many equal maxima
    logits[4] = -INF
    logits[5, 10] = INF
    logits[5, 500] = INF
    logits[6] = torch.where(logits[6] > 1.0, -1e30, 1e30)
    got = keyed_sample(logits, keys, 1, temperature=temperature)
    assert torch.equal(got, _reference(logits, keys, 1, temperature))
    if temperature == 0:
        assert got[3].item() == 100 and got[4].item() == 0 and got[5].item() == 10


def test_nan_wins_as_in_torch_argmax():
    logits, keys, _ = _inputs(4, 1000, seed=13)
    logits[0, 333] = float("nan")
    logits[1, 700] = float("nan")
    logits[1, 20] = float("nan")
    banned = torch.zeros(1000, dtype=torch.bool, device=DEVICE)
    banned[700] = True  # a banned NaN is -inf like any banned id
    for temperature in (0.0, 0.7):
        got = keyed_sample(logits, keys, 0, temperature=temperature, banned=banned)
        assert torch.equal(got, _reference(logits, keys, 0, temperature, banned))
        assert got[:2].tolist() == [333, 20]


def _scale(x, temperature, how):
    """float32 ``x`` scaled by ``1 / temperature`` in one of the ways torch has done it."""
    if how == "divide":  # the CPU
        return x / temperature
    if how == "reciprocal":  # CUDA, torch 2.11: 1/T in float64, rounded to float32
        return x * torch.tensor(1.0 / temperature, dtype=torch.float32)
    return x * (torch.tensor(1.0) / torch.tensor(temperature))  # the float32 reciprocal of float32 T


TORCH_SCALING = "divide" if DEVICE == "cpu" else "reciprocal"


@pytest.mark.parametrize(
    "temperature,other",
    [
        (0.7, "divide" if TORCH_SCALING != "divide" else "reciprocal"),
        (2.9, "divide" if TORCH_SCALING != "divide" else "reciprocal"),
        (2.9, "float32 reciprocal"),
    ],
)
def test_temperature_scaling_breaks_near_ties_as_torch_does(temperature, other):
    """Rows with two finite logits whose perturbed scores nearly tie, chosen so that torch's way of
    scaling by the temperature on this device (``TORCH_SCALING``) and ``other`` pick different
    winners: the kernel must pick torch's. Token-level comparisons on random logits would not see
    an ulp of difference in the scaled logits."""
    rows, width, step = 32, 64, 3
    gen = torch.Generator().manual_seed(31)
    keys = torch.randint(-(2**63), 2**63 - 1, (rows,), generator=gen)
    u = uniform(step_keys(keys, step), width)
    noise = -torch.log(-torch.log(u))
    # The interpreter's log (float64, rounded) is off by an ulp on ~0.1% of u: leave those ids out.
    interp_noise = -torch.log(-torch.log(u.double()).float().double()).float()
    logits = torch.full((rows, width), -INF)
    expected = []
    for row in range(rows):
        a, b = torch.nonzero(noise[row] == interp_noise[row])[:2, 0].tolist()
        # Scaled logits in [32, 64) (one binade with most scores, so an ulp of one is an ulp of
        # the other), spread over the binade: the scalings differ on some of the mantissas.
        x_a = (33.0 + torch.rand(256, generator=gen) * 30.0) * temperature
        score_a = {how: _scale(x_a, temperature, how) + noise[row, a] for how in (TORCH_SCALING, other)}
        centre = (score_a[TORCH_SCALING] - noise[row, b]) * temperature
        x_b = (centre.view(torch.int32)[:, None] + torch.arange(-8, 9, dtype=torch.int32)).view(torch.float32)
        a_wins = {  # ties go to the lower index, a
            how: score_a[how][:, None] >= _scale(x_b, temperature, how) + noise[row, b]
            for how in (TORCH_SCALING, other)
        }
        i, j = torch.nonzero(a_wins[TORCH_SCALING] != a_wins[other])[0].tolist()
        logits[row, a], logits[row, b] = x_a[i], x_b[i, j]
        expected.append(a if a_wins[TORCH_SCALING][i, j] else b)
    logits, keys = logits.to(DEVICE), keys.to(DEVICE)
    got = keyed_sample(logits, keys, step, temperature=temperature)
    assert got.tolist() == expected
    assert torch.equal(got, _reference(logits, keys, step, temperature))


def test_no_rows():
    logits = torch.zeros(0, 50, device=DEVICE)
    keys = torch.zeros(0, dtype=torch.int64, device=DEVICE)
    assert keyed_sample(logits, keys, 0, temperature=1.0).shape == (0,)


def _valid():
    logits, keys, _ = _inputs(3, 40, seed=1)
    return dict(
        logits=logits,
        keys=keys,
        step=torch.zeros(1, dtype=torch.int64, device=DEVICE),
        temperature=0.7,
        banned=torch.zeros(40, dtype=torch.bool, device=DEVICE),
    )


@pytest.mark.parametrize(
    "name,value,match",
    [
        ("logits", torch.zeros(40), "logits must be a 2-D"),
        ("logits", torch.zeros(3, 40, dtype=torch.int64), "logits must be a 2-D"),
        ("logits", torch.zeros(3, 40, dtype=torch.float64), "logits must be a 2-D"),
        ("logits", torch.zeros(40, 3).t(), "logits must have unit stride"),
        ("logits", torch.zeros(3, 0), "logits must have 1 <= V"),
        ("keys", torch.zeros(3, dtype=torch.int32), "keys must be a"),
        ("keys", torch.zeros(4, dtype=torch.int64), "keys must be a"),
        ("keys", torch.zeros(3, 1, dtype=torch.int64), "keys must be a"),
        ("step", 1.5, "step must be an int"),
        ("step", True, "step must be an int"),
        ("step", 2**63, "step must be an int"),
        ("step", torch.zeros(2, dtype=torch.int64), "step must be an int or a \\[1\\] int64"),
        ("step", torch.zeros(1, dtype=torch.int32), "step must be an int or a \\[1\\] int64"),
        ("temperature", -0.1, "temperature must be"),
        ("temperature", float("nan"), "temperature must be"),
        ("temperature", INF, "temperature must be"),
        ("temperature", None, "temperature must be"),
        ("banned", torch.zeros(40, dtype=torch.uint8), "banned must be"),
        ("banned", torch.zeros(41, dtype=torch.bool), "banned must be"),
    ],
)
def test_validation(name, value, match):
    args = _valid()
    if isinstance(value, torch.Tensor):
        value = value.to(DEVICE)
    args[name] = value
    with pytest.raises(ValueError, match=match):
        keyed_sample(args.pop("logits"), args.pop("keys"), args.pop("step"), **args)


@pytest.mark.cuda
def test_device_mismatch_raises():
    args = _valid()
    with pytest.raises(ValueError, match="keys must be on logits' device"):
        keyed_sample(args["logits"], args["keys"].cpu(), 0, temperature=1.0)
    with pytest.raises(ValueError, match="step must be on logits' device"):
        keyed_sample(args["logits"], args["keys"], torch.zeros(1, dtype=torch.int64), temperature=1.0)
    with pytest.raises(ValueError, match="banned must be on logits' device"):
        keyed_sample(args["logits"], args["keys"], 0, temperature=1.0, banned=args["banned"].cpu())
    with pytest.raises(ValueError, match="logits must be a CUDA tensor"):
        keyed_sample(args["logits"].cpu(), args["keys"].cpu(), 0, temperature=1.0)


@pytest.mark.cuda
@pytest.mark.parametrize("rows,width", [(256, 151936), (256, 32000), (1, 151936), (512, 50000)])
@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.3, 2.9])
def test_decode_shapes_on_cuda(rows, width, temperature):
    """The search's shapes (multi-split grids), bf16 logits with a banned tail. T = 2.9 is a
    temperature whose float32 reciprocal differs from the reciprocal rounded from float64."""
    logits, keys, gen = _inputs(rows, width, seed=width + rows, dtype=torch.bfloat16, scale=4.0)
    banned = _random_banned(width, gen, fraction=0.01)
    banned[width - 300 :] = True
    for step in (0, 17):
        got = keyed_sample(logits, keys, step, temperature=temperature, banned=banned)
        assert torch.equal(got, _reference(logits, keys, step, temperature, banned))


@pytest.mark.cuda
def test_cuda_graph_replay_reads_the_step():
    logits, keys, _ = _inputs(256, 32000, seed=21, dtype=torch.bfloat16)
    step = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    keyed_sample(logits, keys, step, temperature=0.7)  # compile outside the capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        keyed_sample(logits, keys, step, temperature=0.7)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        tokens = keyed_sample(logits, keys, step, temperature=0.7)
    for value in range(3):
        step.fill_(value)
        graph.replay()
        assert torch.equal(tokens, _reference(logits, keys, value, 0.7))
