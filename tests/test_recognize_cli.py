"""`cardlib gallery build` + `cardlib recognize --json` end to end on synthetic scans and photos."""
import json
from pathlib import Path

import cv2
import pytest

from cardlib.cli import main
from cardlib.data.camera import simulate_photo
from cardlib.data.catalogue import synthetic_catalogue
from cardlib.export import export_onnx
from cardlib.models.student import build_student


@pytest.fixture(scope="module")
def scans_and_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("recog")
    cat = synthetic_catalogue(12, 2, 0.0, 0.0, seed=3)
    scans = root / "scans"
    scans.mkdir()
    for cid in cat.ids:
        cv2.imwrite(str(scans / f"{cid}.png"), cv2.cvtColor(cat.image(cid), cv2.COLOR_RGB2BGR))
    model = export_onnx(build_student(32), root / "student.onnx", (160, 112), 13, dynamic_batch=True,
                        normalize_output=True)
    photos = []
    for i, cid in enumerate(cat.ids):
        photo = simulate_photo(cat.image(cid), seed=100 + i, difficulty=0.4)
        path = root / "photos" / f"{cid}.jpg"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(photo.image, cv2.COLOR_RGB2BGR))
        photos.append(path)
    return root, cat, model, photos


def test_gallery_build_then_recognize_json(scans_and_model, capsys):
    root, cat, model, photos = scans_and_model
    assert main(["gallery", "build", "--model", str(model), "--scans", str(root / "scans"), "--out",
                 str(root / "gallery")]) == 0
    capsys.readouterr()
    broken = root / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    code = main(["recognize", "--model", str(model), "--gallery", str(root / "gallery"), "--json", "--top-k", "3",
                 *map(str, photos), str(broken)])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1 and len(rows) == len(photos) + 1  # the unreadable file is reported, the others still ran
    assert "error" in rows[-1] and rows[-1]["photo"].endswith("broken.jpg")
    good = rows[:-1]
    assert all(set(r) >= {"photo", "found", "matches"} and len(r["matches"]) == 3 for r in good)
    m = good[0]["matches"][0]
    assert set(m) >= {"card_id", "name", "score", "hash_score", "embedding_score"}
    hits = sum(Path(r["photo"]).stem == r["matches"][0]["card_id"] for r in good)
    assert hits / len(good) >= 0.75, [(Path(r["photo"]).stem, r["matches"][0]["card_id"]) for r in good]


def test_gallery_append_adds_a_set_without_retraining(scans_and_model, tmp_path, capsys):
    root, cat, model, _ = scans_and_model
    first, second = tmp_path / "set1", tmp_path / "set2"
    first.mkdir(), second.mkdir()
    for i, p in enumerate(sorted((root / "scans").iterdir())):
        (first if i < 8 else second).joinpath(p.name).write_bytes(p.read_bytes())
    out = tmp_path / "gallery"
    assert main(["gallery", "build", "--model", str(model), "--scans", str(first), "--out", str(out)]) == 0
    assert main(["gallery", "build", "--model", str(model), "--scans", str(second), "--out", str(out),
                 "--append"]) == 0
    from cardlib.gallery import Gallery

    assert sorted(Gallery.load(out).card_ids) == sorted(cat.ids)
    with pytest.raises(ValueError, match="already in the gallery"):
        main(["gallery", "build", "--model", str(model), "--scans", str(second), "--out", str(out), "--append"])
