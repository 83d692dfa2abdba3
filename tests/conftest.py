from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_file(name: str) -> Path:
    """Path of a file in ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(
            f"{path} is absent (fresh clone without ../shared/data); real-data test skipped"
        )
    return path


@pytest.fixture
def pbmc_path() -> Path:
    return shared_file("pbmc3k.h5ad")
