"""`cardlib gallery build` and `cardlib recognize`: add cards without retraining, identify cards in photos."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def cmd_gallery_build(args) -> int:
    from cardlib.data.catalogue import scans_catalogue
    from cardlib.gallery import Gallery, OnnxEmbedder, catalogue_gallery

    catalogue = scans_catalogue(args.scans, args.metadata)
    bad = catalogue.check_images()
    for cid, why in bad:
        print(f"skipped {cid}: {why}", file=sys.stderr)
    if bad:
        catalogue = catalogue.drop([c for c, _ in bad])
    embedder = OnnxEmbedder(args.model)
    new = catalogue_gallery(catalogue, embedder)
    out = Path(args.out)
    if args.append and (out / "gallery.json").is_file():
        gallery = Gallery.load(out).append(new)
    else:
        gallery = new
    gallery.save(out)
    print(f"{out}: {len(gallery)} cards ({len(new)} embedded now, {len(bad)} skipped)")
    return 0


def cmd_recognize(args) -> int:
    from cardlib.bundle import load_bundle, load_matcher
    from cardlib.recognize import recognize_photos

    if args.bundle:
        matcher = load_bundle(_local_bundle(args.bundle), args.method)
    elif args.model and args.gallery:
        matcher = load_matcher(args.model, args.gallery, args.method)
    else:
        print("cardlib recognize: give --bundle, or --model and --gallery", file=sys.stderr)
        return 2
    rows = recognize_photos(args.photos, matcher, top_k=args.top_k)
    for row in rows:
        if args.json:
            print(json.dumps(row))
        elif "error" in row:
            print(f"{row['photo']}: ERROR {row['error']}")
        else:
            best = row["matches"][0] if row.get("matches") else None
            flag = "" if row["found"] else " (no card outline found: whole photo)"
            unknown = " [unknown card?]" if row.get("unknown") else ""
            print(f"{row['photo']}: {best['card_id']} {best['name']} score {best['score']:.3f}{flag}{unknown}"
                  if best else f"{row['photo']}: no match")
    return 1 if any("error" in r for r in rows) else 0


def _local_bundle(uri: str) -> Path:
    from cardlib.store import cache_dir, materialize

    return materialize(uri, cache_dir("bundles"))


def cmd_hailo_compile(args) -> int:
    from cardlib.hailo import cli_compile

    cli_compile(args)
    return 0


def add_commands(sub) -> None:
    from cardlib.hailo import add_compile_arguments

    g = sub.add_parser("gallery", help="build or extend a gallery of reference cards (no retraining)")
    gsub = g.add_subparsers(dest="action", required=True)
    b = gsub.add_parser("build", help="embed one reference image per card")
    b.add_argument("--model", required=True, help="the student ONNX (dynamic batch)")
    b.add_argument("--scans", required=True, help="folder of <card_id>.<png|jpg|jpeg|webp>")
    b.add_argument("--metadata", help="pokemon-tcg-data folder (cards/en/<set>.json, sets/en.json)")
    b.add_argument("--out", required=True, help="gallery folder")
    b.add_argument("--append", action="store_true", help="add the cards to an existing gallery (a new set)")
    b.set_defaults(func=cmd_gallery_build)

    r = sub.add_parser("recognize", help="identify the card in each photo")
    r.add_argument("photos", nargs="+")
    r.add_argument("--bundle", help="inference bundle folder or s3:// prefix (model + gallery + matcher)")
    r.add_argument("--model", help="student ONNX")
    r.add_argument("--gallery", help="gallery folder")
    r.add_argument("--method", choices=["fused", "hash", "embedding"], default="fused")
    r.add_argument("--top-k", type=int, default=5)
    r.add_argument("--json", action="store_true", help="one JSON line per photo")
    r.set_defaults(func=cmd_recognize)

    h = sub.add_parser("hailo", help="Hailo Dataflow Compiler steps")
    hsub = h.add_subparsers(dest="action", required=True)
    c = hsub.add_parser("compile", help="ONNX + calibration + .alls → HEF (needs hailo_sdk_client)")
    add_compile_arguments(c)
    c.set_defaults(func=cmd_hailo_compile)
