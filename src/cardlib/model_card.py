"""A model card (intended use, data, metrics by factor, caveats) for the deployed student, as Markdown."""
from __future__ import annotations


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def model_card(ctx, results: list[dict], gate_table: dict, open_set_rep: dict) -> str:
    p = ctx.params
    data = ctx.upstream("00")["metrics"]
    deployed = next(r for r in results if r["variant"] == "stage 2 ONNX fp32")
    rep = deployed["reports"]
    pretrained = bool(p.teacher.weights_dir)
    factor_rows = []
    for f, buckets in rep["fused"]["all"]["by_factor"].items():
        for b, v in buckets.items():
            h = rep["hash"]["all"]["by_factor"].get(f, {}).get(b, {}).get("top1")
            e = rep["embedding"]["all"]["by_factor"].get(f, {}).get(b, {}).get("top1")
            factor_rows.append(f"| {f} = {b} | {v['n']} | {_pct(h)} | {_pct(e)} | {_pct(v['top1'])} |")
    gates = "\n".join(f"- **{k}**: {v['value'] if not isinstance(v['value'], float) else round(v['value'], 4)} "
                      f"(threshold {v['threshold']}) — {'PASS' if v['pass'] else 'FAIL'}" for k, v in gate_table.items())
    return f"""### Model card: cardlib student (EfficientNet-Lite0, stage 2 {p.distill.stage2.version})

**Intended use.** Identify a Pokémon trading card from a phone photo: find and rectify the card, embed the crop,
and search a gallery holding one reference image per known card, fused with perceptual hashing. New sets are added
by embedding their reference images, never by retraining. Runs on CPU (ONNX) or a Hailo-8 class accelerator (HEF).
Not intended for grading, price estimation or authenticity checks.

**Training data.** {data.get('cards')} cards from `{p.data.source}` data ({data.get('train_cards')} seen in training,
{data.get('novel_cards')} held out as novel), {data.get('photos')} simulated phone photos cut to card crops by
`find_card`. Teacher: DINOv3 ViT `{p.teacher.preset}`, {'pretrained weights' if pretrained else
'random initialisation (no pretrained weights in this run)'}.

**Evaluation data.** Test photos of seen and of novel cards, against a gallery of all cards; the same crops for every
variant and baseline.

**Metrics (test photos).** Fused top-1 seen {_pct(rep['fused'].get('seen', {}).get('top1'))}, novel
{_pct(rep['fused'].get('novel', {}).get('top1'))}; embedding alone seen {_pct(rep['embedding'].get('seen', {}).get('top1'))},
novel {_pct(rep['embedding'].get('novel', {}).get('top1'))}; pHash+dHash alone seen
{_pct(rep['hash'].get('seen', {}).get('top1'))}, novel {_pct(rep['hash'].get('novel', {}).get('top1'))}.
Open set (novel cards left out of the gallery): "unknown" rejects {_pct(open_set_rep.get('unknown_recall'))} of
the novel cards' photos and {_pct(open_set_rep.get('right_rejected_rate'))} of the right answers; of the rejected
photos {_pct(open_set_rep.get('reject_precision'))} had no right answer (card absent or matched wrong); answers given are
right {_pct(open_set_rep.get('answered_accuracy'))} of the time ({_pct(open_set_rep.get('accuracy_without_rejection'))}
without rejection).

**Gates.**
{gates}

**By photo factor (top-1: hash · embedding · fused).**

| factor | photos | hash | embedding | fused |
|---|---|---|---|---|
{chr(10).join(factor_rows)}

**Caveats.** {'The teacher was trained from scratch on CPU for minutes: its embedding is far weaker than a pretrained DINOv3 teacher, and the hash signal carries much of the fused accuracy. ' if not pretrained else ''}Photos
here are simulated; real photos of holo foil, glare and sleeves may differ. Reprints with identical artwork are
separated only by set symbol and collector number, which small crops barely resolve.
"""
