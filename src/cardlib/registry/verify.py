"""`cardlib verify`: prove every claim of the store (manifest, registry, experiments index) against the bytes."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Optional

from cardlib.registry.backends import ModelRegistry, RegistryError, registry_from_params
from cardlib.registry.manifest import ManifestError, ProjectManifest, read_manifest
from cardlib.store import Layout, Store, StoreError, open_store, store_from_params


@dataclass(frozen=True)
class VerifyRow:
    check: str
    target: str
    status: str  # "ok", "FAIL", or "skip" (a check that needs what was not given, e.g. params for MLflow)
    detail: str = ""


@dataclass
class VerifyReport:
    store_uri: str
    rows: list[VerifyRow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.status != "FAIL" for r in self.rows)

    def failures(self) -> list[VerifyRow]:
        return [r for r in self.rows if r.status == "FAIL"]

    def add(self, check: str, target: str, ok: bool, detail: str = "") -> None:
        self.rows.append(VerifyRow(check, target, "ok" if ok else "FAIL", detail))

    def table(self) -> str:
        """A plain-text table, one row per check, and a verdict line."""
        head = ("check", "target", "status", "detail")
        cells = [head] + [(r.check, r.target, r.status, r.detail) for r in self.rows]
        widths = [min(max(len(c[i]) for c in cells), 72) for i in range(3)]
        fmt = lambda c: "  ".join(v.ljust(w) for v, w in zip(c[:3], widths)) + "  " + c[3]  # noqa: E731
        lines = [fmt(head), "  ".join("-" * w for w in widths) + "  ------"] + [fmt(c) for c in cells[1:]]
        n = len(self.failures())
        lines.append(f"{self.store_uri}: " + ("OK, every check passed" if self.ok else f"{n} check(s) FAILED"))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"store_uri": self.store_uri, "ok": self.ok, "rows": [asdict(r) for r in self.rows]}


class _Hashes:
    """sha256 from content, once per key (the manifest and the registry point at the same objects)."""

    def __init__(self, store: Store):
        self.store, self.cache = store, {}

    def check(self, key: str, size: Optional[int], sha256: Optional[str]) -> tuple[bool, str]:
        if not self.store.exists(key):
            return False, "object missing"
        if size is not None and self.store.size(key) != size:
            return False, f"size {self.store.size(key)} != recorded {size}"
        if not sha256:
            return False, "no sha256 recorded"
        if key not in self.cache:
            self.cache[key] = self.store.sha256(key)
        if self.cache[key] != sha256:
            return False, f"sha256 {self.cache[key][:12]}… != recorded {sha256[:12]}…"
        return True, f"{sha256[:12]}…" + (f" {size} B" if size is not None else "")


def _check_registry(report: VerifyReport, store: Store, registry: ModelRegistry, hashes: _Hashes,
                    manifest: Optional[ProjectManifest]) -> None:
    versions = registry.versions()
    if not versions:
        report.add("registry", registry.backend, False, "no registered versions")
    for v in versions:
        target = f"{v.name} v{v.version}" + (f" ({v.model_id})" if v.model_id else "")
        try:
            key = store.key_for(v.uri)
        except StoreError:
            report.add("registry", target, False, f"points outside the store: {v.uri}")
            continue
        report.add("registry", target, *hashes.check(key, None, v.sha256))
    if manifest is not None:
        for mid, m in manifest.models.items():
            shas = {f.sha256 for f in m.files}
            found = [v for v in versions if v.model_id == mid and v.sha256 in shas]
            report.add("registered", mid, bool(found),
                       ", ".join(f"{v.name} v{v.version} [{v.status}]" for v in found) or "no version of it registered")


def _check_experiments(report: VerifyReport, store: Store, params, layout: Layout,
                       manifest: Optional[ProjectManifest]) -> None:
    key = layout.experiments_index
    if not store.exists(key):
        report.add("experiments", key, False, "experiments index missing")
        return
    try:
        index = json.loads(store.get_text(key))
        run_id, recorded = index["run_id"], index["experiments"]
    except (ValueError, KeyError, TypeError) as e:
        report.add("experiments", key, False, f"unreadable index: {e}")
        return
    if manifest is not None and run_id != manifest.run_id:
        report.add("experiments", key, False, f"index is for run {run_id}, the manifest for {manifest.run_id}")
        return
    if params is None:
        report.rows.append(VerifyRow("experiments", key, "skip", "no params: MLflow not queried"))
        return
    from cardlib import tracking

    live = tracking.runs_for(params, store, run_id)
    ids = lambda d: {e: sorted(r["run_id"] for r in rs) for e, rs in d.items()}  # noqa: E731
    want, have = ids(recorded), ids(live)
    report.add("experiments", key, want == have,
               f"{sum(map(len, want.values()))} runs in {len(want)} experiments match MLflow" if want == have
               else f"index {want} != MLflow {have}")


def verify(store: Store, registry: Optional[ModelRegistry] = None, params=None) -> VerifyReport:
    """Structure, manifest schema, every manifest object's bytes, registry versions, experiments index."""
    report, hashes = VerifyReport(store.uri), _Hashes(store)
    manifest = None
    try:
        manifest = read_manifest(store)
        report.add("manifest", Layout().manifest, True,
                   f"run {manifest.run_id}, {len(manifest.models)} models, {len(manifest.files())} files")
    except (ManifestError, StoreError) as e:
        report.add("manifest", Layout().manifest, False, str(e).replace("\n", " "))
    layout = manifest.layout() if manifest else Layout.from_params(params) if params else Layout()
    missing = store.missing_folders(layout)
    report.add("structure", store.uri, not missing,
               f"missing {', '.join(missing)}" if missing else f"{len(layout.folders())} folders present")
    for mid, f in manifest.files() if manifest else []:
        report.add("object", f.key, *hashes.check(f.key, f.size, f.sha256))
    if registry is not None:
        _check_registry(report, store, registry, hashes, manifest)
    _check_experiments(report, store, params, layout, manifest)
    return report


def verify_main(store_uri: Optional[str], params) -> int:
    """`cardlib verify [--store URI]`: print the table; 0 when every check passed, else 1."""
    from botocore.exceptions import BotoCoreError, ClientError

    s = params.store
    try:
        store = (open_store(store_uri, s.region, multipart_threshold_mb=s.multipart_threshold_mb,
                            multipart_chunksize_mb=s.multipart_chunksize_mb, max_concurrency=s.max_concurrency)
                 if store_uri else store_from_params(params))
        registry = registry_from_params(params, store)
    except (StoreError, RegistryError, BotoCoreError, ClientError) as e:  # no traceback for a wrong store/region
        print(f"cardlib verify: {e}", file=sys.stderr)
        return 1
    report = verify(store, registry, params)
    print(report.table())
    return 0 if report.ok else 1
