"""Replays of recorded launches: the address patching rule (CPU) and replayed decode calls that see
new inputs of the same metadata (GPU)."""

from __future__ import annotations

import pytest
import torch

from dsv4_tune import sparse_decode
from dsv4_tune.kernels.reference import sparse_decode_ref
from dsv4_tune.runtime.cuda_driver import DirectLaunch
from dsv4_tune.runtime.recording import RecordedLaunch, Recording, Replay
from dsv4_tune.runtime.workspace import Workspace
from dsv4_tune.tuner.inputs import make_query
from tests.test_sparse_decode import Case, check_against_reference, make_case, plans_for


def _recording(*launches: list[torch.Tensor]) -> Recording:
    rec = Recording()
    for tensors in launches:
        args: list[object] = [t.data_ptr() for t in tensors] + [7, 0.5]
        rec.launches.append(RecordedLaunch("compiled", (1, 1, 1), args, list(tensors), list(range(len(tensors)))))
    return rec


def test_replay_patches_inputs_and_keeps_scratch() -> None:
    a, b, scratch = torch.zeros(8), torch.zeros(8), torch.zeros(16)
    replay = Replay.build(_recording([a, scratch[4:]], [b, a]), [a, None, b], [scratch])
    assert replay is not None
    assert [launch.patch for launch in replay.launches] == [[(0, 0)], [(0, 2), (1, 0)]]
    assert replay.launches[0].template[1] == scratch[4:].data_ptr()  # the scratch address stays recorded


def test_replay_of_aliased_inputs_fits_only_aliased_calls() -> None:
    """Recorded with one object in two argument positions (say topk_length is extra_topk_length), a
    slot cannot tell which position it came from: the replay fits only calls with that aliasing."""
    a, b = torch.zeros(8), torch.zeros(8)
    replay = Replay.build(_recording([a, b]), [a, b, a], [])
    assert replay is not None and replay.aliases == ((0, 2),)
    assert replay.fits([100, 200, 100]) and not replay.fits([100, 200, 300])
    assert Replay.build(_recording([a, b]), [a, b], []).fits([1, 2])  # type: ignore[union-attr]


@pytest.mark.parametrize("derived", ["view", "copy"])
def test_replay_refuses_tensors_it_cannot_track(derived: str) -> None:
    """A view of an input (its address moves with the input) or a fresh copy (not scratch) in a
    launch makes the call not replayable."""
    a, scratch = torch.zeros(8), torch.zeros(16)
    other = a[2:] if derived == "view" else a.clone()
    assert Replay.build(_recording([a, other]), [a], [scratch]) is None


@pytest.mark.gpu
@pytest.mark.gpu_only
def test_replayed_calls_see_new_inputs(device, gen) -> None:
    """Calls after the first of a kind run from the replay, with new q / indices / outputs (other
    objects, same metadata), including a non-contiguous q (the launchers copy it: not replayable)."""
    base = make_case(device, gen, b=3, s_q=1, h=64, topk=128, x_topk=192, x_page=64, sink="finite")
    for plan in plans_for(base):
        ws = Workspace()
        for step in range(4):
            q = make_query(3, 1, 64, device=device, gen=gen)
            if step == 3:  # head stride 513: not 16-byte rows, so the entry copies q
                q = torch.empty(3, 1, 64, 513, dtype=q.dtype, device=device)[..., :512].copy_(q)
            perm = torch.randperm(3, generator=gen).to(device)
            main = type(base.main)(base.main.kv_cache, base.main.indices[perm].contiguous(),
                                   base.main.topk_length[perm].contiguous())
            case = Case(q, main, base.extra, base.sink)
            out, lse = case.run(plan, ws)
            check_against_reference(f"step {step} {plan}", out, lse, *case.ref)
        replays = list(ws.replays.replays())
        assert replays, f"{plan}: no call was replayed"
        launches = [launch for r in replays for launch in r.launches]  # type: ignore[attr-defined]
        if torch.version.hip is None:  # CUDA: every launch goes straight to the driver
            assert all(isinstance(launch, DirectLaunch) for launch in launches), f"{plan}: {launches}"


@pytest.mark.gpu
@pytest.mark.gpu_only
def test_replay_steps_aside_for_misaligned_inputs(device, gen) -> None:
    case = make_case(device, gen, b=2, h=16, topk=64, x_topk=64, x_page=64)
    ws = Workspace()
    for _ in range(3):
        case.run(None, ws)
    raw = torch.empty(2 * 16 * 512 + 8, dtype=torch.bfloat16, device=device)
    q = raw[4:4 + 2 * 16 * 512].view(2, 1, 16, 512).copy_(case.q)  # 8 bytes off: not replayed
    out, lse = sparse_decode(q, case.main.kv_cache, case.main.indices, workspace=ws, **case.kw)
    ref = sparse_decode_ref(q, case.main.kv_cache, case.main.indices, fp8="e4m3fn", out_dtype=torch.float32,
                            **case.kw)
    check_against_reference("misaligned q", out, lse, *ref)


def test_workspace_forgets_replays_with_its_buffers() -> None:
    ws = Workspace()
    ws.get("part_o", (2, 3), torch.float32, torch.device("cpu"))
    a = torch.zeros(4)
    ws.replays.remember(("k",), [a], "replay")
    assert list(ws.replays.replays()) == ["replay"]
    ws.clear()
    assert len(ws.replays) == 0 and ws.buffers() == []


def test_a_recording_sees_only_its_own_thread() -> None:
    import threading

    seen: list[object] = []
    with Recording() as rec:
        t = threading.Thread(target=lambda: seen.append(Recording.current()))
        t.start()
        t.join()
        assert Recording.current() is rec
    assert seen == [None] and Recording.current() is None


@pytest.mark.gpu
@pytest.mark.gpu_only
def test_replays_from_other_threads(device, gen) -> None:
    """A replay launched from a fresh thread (no CUDA context current there yet) and from several
    threads at once writes each call's own outputs."""
    import threading

    from dsv4_tune.registry.variants import get_variant

    cases = [make_case(device, gen, b=2, h=16, topk=64, x_topk=64, x_page=64, sink="finite") for _ in range(5)]
    plan = get_variant("fused").default(cases[0].workload)
    ws = Workspace()
    for _ in range(2):
        cases[0].run(plan, ws)  # the first call records, the second replays
    outs = [(torch.full((2, 1, 16, 512), float("nan"), dtype=torch.bfloat16, device=device),
             torch.full((2, 16, 1), float("nan"), device=device)) for _ in cases]
    errors: list[BaseException] = []

    def call(i: int, times: int = 1, start: threading.Barrier | None = None) -> None:
        try:
            if start is not None:
                start.wait()
            c = cases[i]
            for _ in range(times):
                sparse_decode(c.q, c.main.kv_cache, c.main.indices, plan=plan, workspace=ws, out=outs[i], **c.kw)
        except BaseException as e:
            errors.append(e)

    fresh = threading.Thread(target=call, args=(1,))
    fresh.start()
    fresh.join()
    start = threading.Barrier(3)
    threads = [threading.Thread(target=call, args=(i, 50, start)) for i in (2, 3, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.cuda.synchronize()
    assert not errors, errors
    assert len(ws.replays) == 1, "the threads' calls were not replays of the recorded kind"
    for i in range(1, 5):
        check_against_reference(f"thread call {i}", *outs[i], *cases[i].ref)
