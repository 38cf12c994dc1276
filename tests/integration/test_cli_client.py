"""``maskserve segment | extract | everything`` over a folder, as a user types them, against the real service."""

from __future__ import annotations

import os
import subprocess
import sys

from PIL import Image

from maskserve.devtools.pictures import image_bytes
from maskserve.triton.server import free_port
from tests.plugins.calls import ledger_state


def maskserve(args: list[str], env: dict[str, str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "maskserve.cli", *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_folder_goes_through_batches_with_a_summary_and_exit_codes(api, tmp_path):
    key_id, secret = api.create_key(100)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(5):
        (folder / f"p{i}.jpg").write_bytes(image_bytes(160, 120, seed=700 + i))
    env = {"MASKSERVE_API_KEY": secret, "MASKSERVE_URL": api.url}
    done = maskserve(
        ["segment", str(folder), "--point", "80,60", "--point", "10,10,0", "--batch-size", "2", "--out", "masks"],
        env,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == [f"p{i}.png" for i in range(5)]
    assert Image.open(tmp_path / "masks" / "p0.png").size == (160, 120)
    assert "5 of 5 images done, 0 failed, 5 credits used" in done.stderr and "segment:" in done.stderr  # the bar

    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    cut = maskserve(
        [
            "extract",
            str(folder / "*.jpg"),
            "--box",
            "10,10,150,110",
            "--format",
            "jpeg",
            "--bg-color",
            "#ffffff",
            "--out",
            "cuts",
        ],
        env,
        tmp_path,
    )
    assert cut.returncode == 3, cut.stderr  # one image failed, the others are written
    assert "broken.jpg" in cut.stderr and "5 of 6 images done, 1 failed, 10 credits used" in cut.stderr
    assert Image.open(tmp_path / "cuts" / "p1.jpeg").format == "JPEG"

    every = maskserve(["everything", str(folder / "p0.jpg"), "--points-per-side", "4", "--out", "all"], env, tmp_path)
    assert every.returncode == 0, every.stderr
    assert (tmp_path / "all" / "p0.png").is_file() and (tmp_path / "all" / "p0.json").is_file()
    assert ledger_state(api.settings.database_path, key_id)["balance"] == 100 - 5 - 10 - 4


def test_usage_and_service_errors_have_their_own_exit_codes(api, tmp_path):
    _, secret = api.create_key(1)
    photo = tmp_path / "p.jpg"
    photo.write_bytes(image_bytes(64, 48))
    env = {"MASKSERVE_API_KEY": secret, "MASKSERVE_URL": api.url}
    assert maskserve(["segment", str(photo)], env, tmp_path).returncode == 2  # no prompt
    assert maskserve(["segment", str(tmp_path / "none*.jpg"), "--point", "1,1"], env, tmp_path).returncode == 2
    assert maskserve(["segment", str(photo), "--point", "1"], env, tmp_path).returncode == 2
    assert maskserve(["segment", str(photo), "--point", "1,1"], {"MASKSERVE_API_KEY": ""}, tmp_path).returncode == 2
    wrong = maskserve(["segment", str(photo), "--point", "1,1"], {**env, "MASKSERVE_API_KEY": "sk-live-nope"}, tmp_path)
    assert wrong.returncode == 4 and "401" in wrong.stderr
    away = {**env, "MASKSERVE_URL": f"http://127.0.0.1:{free_port()}"}
    assert maskserve(["segment", str(photo), "--point", "1,1"], away, tmp_path).returncode == 4


def test_many_prompts_on_each_image_upload_it_once(api, tmp_path):
    _, secret = api.create_key(20)
    (tmp_path / "a.jpg").write_bytes(image_bytes(160, 120, seed=720))
    (tmp_path / "prompts.jsonl").write_text(
        '{"points": [[80, 60]]}\n\n{"points": [[20, 20], [80, 60]], "labels": [0, 1]}\n{"box": [10, 10, 150, 110]}\n'
    )
    env = {"MASKSERVE_API_KEY": secret, "MASKSERVE_URL": api.url}
    done = maskserve(["segment", "a.jpg", "--prompts", "prompts.jsonl", "--out", "masks"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["a_1.png", "a_2.png", "a_3.png"]
    assert "3 credits used" in done.stderr
    (tmp_path / "bad.jsonl").write_text('{"feather": 3}\n')
    bad = maskserve(["segment", "a.jpg", "--prompts", "bad.jsonl"], env, tmp_path)
    assert bad.returncode == 2 and "line 1" in bad.stderr
