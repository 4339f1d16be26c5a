"""The FlashMLA face (``dsv4_tune.compat.flash_mla``) against the reference, convention by convention:
strided q and indices, padded page strides, FlashMLA's float8 cache dtype, page sizes 2 / 61 / 64,
s_q 1 and 3, one and two scopes with and without lengths, +-inf sinks, lonely rows; and the calls
it refuses."""

from __future__ import annotations

import pytest
import torch

from dsv4_tune.compat import flash_mla
from dsv4_tune.kernels import kv_layout as L
from dsv4_tune.kernels.reference import sparse_decode_ref
from dsv4_tune.tuner.inputs import Scope, make_query, make_scope, make_sink
from tests.test_sparse_decode import check_against_reference

pytestmark = pytest.mark.gpu


def _strided_like(t: torch.Tensor, pad: int) -> torch.Tensor:
    """A copy of ``t`` whose only contiguous dim is the last (every other stride padded), as
    engines slice q and indices out of larger buffers."""
    wide = torch.full((*(d + 1 for d in t.shape[:-1]), t.shape[-1] + pad), -1, dtype=t.dtype, device=t.device)
    view = wide[(*(slice(0, d) for d in t.shape[:-1]), slice(pad, pad + t.shape[-1]))]
    view.copy_(t)
    return view


def _wider_pages(kv: torch.Tensor, extra_bytes: int) -> torch.Tensor:
    """The same pool with each page padded by ``extra_bytes`` more (a multiple of 576 B)."""
    pages, page_size = kv.shape[0], kv.shape[1]
    rows = kv.as_strided((pages, kv.stride(0)), (kv.stride(0), 1))
    wide = torch.full((pages, kv.stride(0) + extra_bytes), 0xFF, dtype=torch.uint8, device=kv.device)
    wide[:, : kv.stride(0)] = rows
    return L.pool_view(wide, page_size)


def _run(q, main: Scope, extra: Scope | None, sink, scale, meta=None, **kw):
    meta = meta or flash_mla.get_mla_metadata()[0]
    return flash_mla.flash_mla_with_kvcache(
        q, main.kv_cache, None, None, 512, meta, softmax_scale=scale, is_fp8_kvcache=True, indices=main.indices,
        attn_sink=sink, extra_k_cache=extra.kv_cache if extra else None,
        extra_indices_in_kvcache=extra.indices if extra else None, topk_length=main.topk_length,
        extra_topk_length=extra.topk_length if extra else None, **kw)


def _reference(q, main: Scope, extra: Scope | None, sink, scale):
    return sparse_decode_ref(
        q, main.kv_cache, main.indices, topk_length=main.topk_length, attn_sink=sink, sm_scale=scale, fp8="e4m3fn",
        extra_k_cache=extra.kv_cache if extra else None, extra_indices=extra.indices if extra else None,
        extra_topk_length=extra.topk_length if extra else None, out_dtype=torch.float32)


# (s_q, main page, main lengths, extra page or None, extra lengths, sink, scale)
CONVENTIONS = [
    (1, 2, "random", 61, "random", "mixed", None),   # both scopes with lengths, default scale
    (3, 61, None, 64, None, "+inf", 512**-0.55),      # both scopes without lengths, sink +inf
    (3, 64, "random", None, None, "-inf", None),      # one scope with lengths, sink -inf
    (1, 64, None, 2, "random", "none", 512**-0.55),  # lengths on the extra scope only, no sink
]


@pytest.mark.parametrize(("s_q", "page", "length", "x_page", "x_length", "sink", "scale"), CONVENTIONS)
def test_flashmla_conventions_match_the_reference(s_q, page, length, x_page, x_length, sink, scale, device, gen):
    b, h = 2, 16
    main = make_scope(b, s_q, 48, page, fp8="e4m3fn", device=device, topk_length=length, gen=gen)
    extra = None if x_page is None else make_scope(b, s_q, 40, x_page, fp8="e4m3fn", device=device,
                                                   topk_length=x_length, gen=gen)
    q = make_query(b, s_q, h, device=device, gen=gen)
    attn_sink = make_sink(h, kind=sink, device=device, gen=gen)
    ref = _reference(q, main, extra, attn_sink, 512**-0.5 if scale is None else scale)
    # As engines pass them: q and indices strided (last dim contiguous), pages padded beyond the
    # minimum, a cache in FlashMLA's float8_e4m3fn dtype.
    main_s = Scope(_wider_pages(main.kv_cache, 576).view(torch.float8_e4m3fn), _strided_like(main.indices, 3),
                   main.topk_length)
    extra_s = None if extra is None else Scope(extra.kv_cache, _strided_like(extra.indices, 5), extra.topk_length)
    q_s = _strided_like(q, 64)
    assert q_s.stride(-1) == 1 and not q_s.is_contiguous() and not main_s.indices.is_contiguous()
    meta, none = flash_mla.get_mla_metadata(None, s_q * h, 1)
    assert none is None and not meta.have_initialized
    for _ in range(2):  # the first call records, the second replays
        out, lse = _run(q_s, main_s, extra_s, attn_sink, scale, meta)
        assert out.shape == (b, s_q, h, 512) and out.dtype == torch.bfloat16
        assert lse.shape == (b, h, s_q) and lse.dtype == torch.float32
        check_against_reference(f"s_q={s_q} pages {page}/{x_page} sink {sink}", out, lse, *ref)
    assert meta.have_initialized


def test_lonely_rows_give_zero_and_infinite_lse(device, gen):
    """All ids -1 in row 0, lengths 0 in both scopes in row 1, the sink excluded from lse in row 2."""
    b, s_q, h = 3, 3, 16
    main = make_scope(b, s_q, 32, 61, fp8="e4m3fn", device=device, topk_length=[32, 0, 32], gen=gen)
    extra = make_scope(b, s_q, 32, 2, fp8="e4m3fn", device=device, topk_length=[32, 0, 20], gen=gen)
    main.indices[0] = -1
    extra.indices[0] = -1
    q = make_query(b, s_q, h, device=device, gen=gen)
    sink = make_sink(h, kind="finite", device=device, gen=gen)
    out, lse = _run(q, main, extra, sink, None)
    assert bool((out[:2] == 0).all()) and bool(torch.isposinf(lse[:2]).all())
    ref = _reference(q, main, extra, sink, 512**-0.5)
    check_against_reference("lonely rows", out, lse, *ref)
    no_sink = _reference(q, main, extra, None, 512**-0.5)
    assert torch.equal(ref[1], no_sink[1]) and not torch.equal(ref[0], no_sink[0])  # the test can tell


def test_metadata_holds_a_workspace_that_stops_growing(device, gen):
    main = make_scope(2, 1, 64, 64, fp8="e4m3fn", device=device, gen=gen)
    q = make_query(2, 1, 16, device=device, gen=gen)
    meta, _ = flash_mla.get_mla_metadata()
    _run(q, main, None, None, None, meta)
    held = meta.workspace.nbytes()
    assert meta.workspace is flash_mla.stream_workspace(q.device)
    _run(q, main, None, None, None, meta)
    assert meta.workspace.nbytes() == held


def _refused(**override) -> str:
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    kv = L.make_kv_cache(2, 64, dev)
    args = dict(q=torch.zeros(1, 1, 16, 512, dtype=torch.bfloat16, device=dev), k_cache=kv, block_table=None,
                cache_seqlens=None, head_dim_v=512, tile_scheduler_metadata=flash_mla.get_mla_metadata()[0],
                is_fp8_kvcache=True, indices=torch.zeros(1, 1, 8, dtype=torch.int32, device=dev)) | override
    with pytest.raises(flash_mla.UnsupportedCall) as err:
        flash_mla.flash_mla_with_kvcache(**args)
    assert "serves FlashMLA's sparse FP8 decode of DeepSeek-V4 only" in str(err.value)
    return str(err.value)


def test_calls_outside_the_contract_name_what_is_supported():
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    assert "dense decode" in _refused(indices=None, block_table=torch.zeros(1, 4, dtype=torch.int32),
                                      cache_seqlens=torch.ones(1, dtype=torch.int32))
    assert "is_fp8_kvcache=False" in _refused(is_fp8_kvcache=False)
    assert "causal=True" in _refused(causal=True)
    assert "head_dim_v=576" in _refused(head_dim_v=576)
    v32 = torch.zeros(2, 64, 1, 656, dtype=torch.uint8, device=dev)
    assert "656 B per token" in _refused(k_cache=v32, q=torch.zeros(1, 1, 16, 576, dtype=torch.bfloat16, device=dev))
    assert "torch.bfloat16 k_cache" in _refused(k_cache=torch.zeros(2, 64, 1, 512, dtype=torch.bfloat16, device=dev))
    assert "q with head dim 576" in _refused(q=torch.zeros(1, 1, 16, 576, dtype=torch.bfloat16, device=dev))


def test_unpadded_pages_and_strided_lengths_are_refused_not_misread(device):
    """A page stride that is not a multiple of 576 B is not DSV4's layout, and the kernels read
    topk_length and attn_sink unstrided: both are refused by name."""
    meta = flash_mla.get_mla_metadata()[0]
    q = torch.zeros(2, 1, 16, 512, dtype=torch.bfloat16, device=device)
    idx = torch.zeros(2, 1, 8, dtype=torch.int32, device=device)
    unpadded = torch.zeros(2, 64, 1, 584, dtype=torch.uint8, device=device)
    with pytest.raises(ValueError, match="k_cache: page stride 37376 B must be a multiple of 576 B"):
        flash_mla.flash_mla_with_kvcache(q, unpadded, None, None, 512, meta, is_fp8_kvcache=True, indices=idx)
    kv = L.make_kv_cache(2, 64, device)
    lengths = torch.zeros(2, 2, dtype=torch.int32, device=device)[:, 0]
    with pytest.raises(ValueError, match="topk_length: expected a contiguous tensor"):
        flash_mla.flash_mla_with_kvcache(q, kv, None, None, 512, meta, is_fp8_kvcache=True, indices=idx,
                                         topk_length=lengths)
    sink = torch.zeros(16, 2, device=device)[:, 1]
    with pytest.raises(ValueError, match="attn_sink: expected a contiguous tensor"):
        flash_mla.flash_mla_with_kvcache(q, kv, None, None, 512, meta, is_fp8_kvcache=True, indices=idx,
                                         attn_sink=sink)


@pytest.mark.gpu_only
def test_captured_in_a_cuda_graph_follows_new_inputs(device, gen):
    """Warm up once, capture the call, replay with new contents in the captured tensors."""
    b, s_q, h = 8, 1, 64

    def scopes():
        main = make_scope(b, s_q, 128, 64, fp8="e4m3fn", device=device, num_pages=40, gen=gen)
        extra = make_scope(b, s_q, 512, 2, fp8="e4m3fn", device=device, num_pages=2100, gen=gen)
        return main, extra, make_query(b, s_q, h, device=device, gen=gen), make_sink(h, device=device, gen=gen)

    (main, extra, q, sink), (main2, extra2, q2, sink2) = scopes(), scopes()
    meta = flash_mla.get_mla_metadata()[0]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        _run(q, main, extra, sink, None, meta)  # warm: compiles, sizes the workspace, records
    torch.cuda.current_stream().wait_stream(side)
    held = meta.workspace.nbytes()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = _run(q, main, extra, sink, None, meta)
    assert meta.workspace.nbytes() == held, "the capture must not allocate workspace"
    graph.replay()
    torch.cuda.synchronize()
    check_against_reference("graph", out, lse, *_reference(q, main, extra, sink, 512**-0.5))
    for dst, src in ((q, q2), (sink, sink2), (main.kv_cache, main2.kv_cache), (main.indices, main2.indices),
                     (main.topk_length, main2.topk_length), (extra.kv_cache, extra2.kv_cache),
                     (extra.indices, extra2.indices), (extra.topk_length, extra2.topk_length)):
        dst.copy_(src)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    check_against_reference("graph replay", out, lse, *_reference(q2, main2, extra2, sink2, 512**-0.5))
