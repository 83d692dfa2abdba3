"""Interruptions become `Interrupted` with the shell's exit status; handlers are restored."""

import os
import signal
import sys
import types

import pytest

from ensemblevi import _interrupt as I


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_raises_interrupted_with_exit_code(sig, code):
    before = signal.getsignal(sig)
    with pytest.raises(I.Interrupted) as info, I.interruptible():
        os.kill(os.getpid(), sig)
        for _ in range(10_000):  # the handler runs between bytecodes
            pass
    assert info.value.signum == sig and info.value.exit_code == code
    assert not isinstance(info.value, (Exception, KeyboardInterrupt))
    assert signal.getsignal(sig) is before


def test_resume_hint_in_message():
    with I.interruptible():
        assert I.resume_hint() is None
        I.set_resume_hint("kept epoch 3 in out/; rerun with --resume")
        text = I.message(I.Interrupted(signal.SIGTERM))
    assert text == "Interrupted (SIGTERM): kept epoch 3 in out/; rerun with --resume"
    with I.interruptible():  # a new block starts without the old hint
        assert "rerun the same command" in I.message(I.Interrupted(signal.SIGINT))


def test_scvi_runner_message_silenced_only_for_interruptions(monkeypatch, capsys):
    fake = types.ModuleType(I._SCVI_RUNNER)
    monkeypatch.setitem(sys.modules, I._SCVI_RUNNER, fake)
    with pytest.raises(I.Interrupted), I.interruptible():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000):
                pass
        except BaseException as e:  # what scvi-tools' TrainRunner does
            fake.print("Exception raised during training.", NameError, e)
            fake.print("other output")
            raise
    assert capsys.readouterr().out == "other output\n"
    assert not hasattr(fake, "print")  # the shim is gone after the block


def test_deferred_holds_the_signal_until_the_block_is_done():
    done = []
    with pytest.raises(I.Interrupted) as info, I.interruptible():
        with I.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000):
                pass
            done.append("commit")  # the block finishes despite the signal
        done.append("after")  # never reached: the held signal is raised here
    assert done == ["commit"] and info.value.exit_code == 143
    with I.deferred():  # outside interruptible(): no handler is swapped
        assert signal.getsignal(signal.SIGTERM) is not I._handler


def test_an_ignored_signal_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # e.g. started with nohup
    try:
        with I.interruptible():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is I._handler
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_interrupted_pickles_and_reads():
    import pickle

    err = pickle.loads(pickle.dumps(I.Interrupted(signal.SIGINT)))
    assert (err.signum, err.exit_code, str(err)) == (signal.SIGINT, 130, "interrupted by SIGINT")
