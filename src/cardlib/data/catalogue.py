"""The card catalogue: one `Card` record per printable card, and importers (synthetic, scan folder, store prefix)."""
from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from PIL import Image

VARIANTS = ("normal", "holo", "reverse_holo")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HOLO_RARITIES = ("holo", "rare", "ultra", "illustration", "secret", "hyper", "shiny", "amazing", "radiant", "ace")


def validate_card_id(card_id: str) -> str:
    """Return `card_id` if it is safe as a file name; raise ValueError naming it otherwise."""
    if not isinstance(card_id, str) or not _ID_RE.match(card_id) or ".." in card_id:
        raise ValueError(
            f"bad card id {card_id!r}: must match {_ID_RE.pattern} (letters, digits, '.', '_', '-'; no '..' or separators)"
        )
    return card_id


@dataclass(frozen=True)
class Card:
    """One printed card. `artwork_id` is shared by reprints and foil variants of one artwork (hard negatives)."""

    card_id: str
    name: str
    set_id: str
    set_name: str
    number: str  # collector number as printed ("12", "TG05")
    set_total: int  # printed set size ("12/108" -> 108); 0 when unknown
    rarity: str
    variant: str = "normal"
    artwork_id: str = ""  # empty -> the card's own id
    supertype: Optional[str] = None
    types: tuple[str, ...] = ()
    hp: Optional[int] = None
    source_path: Optional[str] = None  # a scan on disk; None -> rendered

    def __post_init__(self):
        validate_card_id(self.card_id)
        if self.variant not in VARIANTS:
            raise ValueError(f"card {self.card_id}: variant {self.variant!r} not in {VARIANTS}")
        object.__setattr__(self, "types", tuple(self.types))
        object.__setattr__(self, "set_total", int(self.set_total))
        if not self.artwork_id:
            object.__setattr__(self, "artwork_id", self.card_id)

    @property
    def collector_number(self) -> str:
        return f"{self.number}/{self.set_total}" if self.set_total else self.number

    def to_record(self) -> dict:
        d = asdict(self)
        d["types"] = list(self.types)
        return d

    @classmethod
    def from_record(cls, d: dict) -> "Card":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"card record {d.get('card_id')!r}: unknown fields {sorted(unknown)}")
        return cls(**d)


class Catalogue:
    """Ordered, id-unique cards with their images (scans composited on white, or rendered)."""

    def __init__(self, cards: Iterable[Card], card_size: tuple[int, int] = (350, 250), render_seed: int = 0,
                 cache_size: int = 256):
        self.cards: list[Card] = list(cards)
        if not self.cards:
            raise ValueError("empty catalogue: no cards were found or all were excluded")
        self.card_size = (int(card_size[0]), int(card_size[1]))
        self.render_seed = int(render_seed)
        self._by_id: dict[str, Card] = {}
        for c in self.cards:
            if c.card_id in self._by_id:
                raise ValueError(f"duplicate card id {c.card_id!r} in catalogue")
            self._by_id[c.card_id] = c
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    def __len__(self) -> int:
        return len(self.cards)

    def __iter__(self):
        return iter(self.cards)

    def __contains__(self, card_id: str) -> bool:
        return card_id in self._by_id

    @property
    def ids(self) -> list[str]:
        return [c.card_id for c in self.cards]

    def by_id(self, card_id: str) -> Card:
        try:
            return self._by_id[card_id]
        except KeyError:
            raise KeyError(f"card {card_id!r} is not in the catalogue ({len(self)} cards)") from None

    def image(self, card_id: str) -> np.ndarray:
        """RGB uint8 (H, W, 3) at `card_size`: the scan (alpha composited on white) or a rendered card."""
        hit = self._cache.get(card_id)
        if hit is not None:
            self._cache.move_to_end(card_id)
            return hit.copy()
        card = self.by_id(card_id)
        if card.source_path:
            img = load_scan(card.source_path, self.card_size)
        else:
            from .render import render_card
            img = render_card(card, self.card_size, seed=self.render_seed)
        self._cache[card_id] = img
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return img.copy()

    def check_images(self) -> list[tuple[str, str]]:
        """(card_id, reason) for every scan that is missing, unreadable or corrupt; rendered cards always pass."""
        bad = []
        for c in self.cards:
            if not c.source_path:
                continue
            try:
                load_scan(c.source_path, self.card_size)
            except Exception as e:  # any decoder failure is a bad file, reported not raised
                bad.append((c.card_id, f"{type(e).__name__}: {e}"))
        return bad

    def drop(self, ids: Iterable[str]) -> "Catalogue":
        """A new catalogue without `ids` (each must exist); raises when nothing would be left."""
        ids = set(ids)
        missing = sorted(i for i in ids if i not in self._by_id)
        if missing:
            raise KeyError(f"cannot drop unknown card ids: {missing[:5]}")
        return Catalogue([c for c in self.cards if c.card_id not in ids], self.card_size, self.render_seed,
                         self._cache_size)

    def subset(self, ids: Iterable[str]) -> "Catalogue":
        """A new catalogue of `ids`, in catalogue order."""
        keep = set(ids)
        for i in keep:
            self.by_id(i)
        return Catalogue([c for c in self.cards if c.card_id in keep], self.card_size, self.render_seed,
                         self._cache_size)

    def groups(self) -> dict[str, list[str]]:
        """artwork_id -> card ids sharing that artwork (reprints and variants)."""
        out: dict[str, list[str]] = {}
        for c in self.cards:
            out.setdefault(c.artwork_id, []).append(c.card_id)
        return out

    def to_records(self) -> dict:
        return {"card_size": list(self.card_size), "render_seed": self.render_seed,
                "cards": [c.to_record() for c in self.cards]}

    @classmethod
    def from_records(cls, records: dict) -> "Catalogue":
        return cls([Card.from_record(r) for r in records["cards"]], tuple(records.get("card_size", (350, 250))),
                   int(records.get("render_seed", 0)))

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_records(), indent=1))

    @classmethod
    def load_json(cls, path: str | Path) -> "Catalogue":
        return cls.from_records(json.loads(Path(path).read_text()))


def load_scan(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """Decode a scan fully (so truncation is caught), composite alpha on white, resize to (H, W)."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "P", "PA"):
            rgba = im.convert("RGBA")
            img = Image.new("RGB", rgba.size, (255, 255, 255))
            img.paste(rgba, mask=rgba.getchannel("A"))
        else:
            img = im.convert("RGB")
    h, w = size
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.LANCZOS if img.width > w else Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8).copy()



# ---------------------------------------------------------------- synthetic importer

_SYLLABLES = ("pi", "ka", "chu", "bul", "ba", "saur", "char", "man", "der", "squ", "tle", "ee", "vee", "gen", "gar",
              "on", "mew", "ty", "lu", "cario", "zor", "ua", "dra", "go", "nite", "snor", "lax", "jig", "ly", "puff",
              "ra", "ichu", "to", "ge", "pi", "kip", "fen", "nek", "qua", "xly", "sprig", "at", "ito", "tin", "kat")
_SET_WORDS = (("Crystal", "Shadow", "Ancient", "Paradox", "Silver", "Obsidian", "Lost", "Evolving", "Fusion", "Astral",
               "Burning", "Rebel", "Vivid", "Chilling", "Brilliant", "Hidden"),
              ("Tides", "Rift", "Origins", "Flames", "Storm", "Tempest", "Skies", "Strike", "Radiance", "Clash",
               "Reign", "Voltage", "Destinies", "Fates", "Stars", "Forces"))
TYPES = ("Grass", "Fire", "Water", "Lightning", "Psychic", "Fighting", "Darkness", "Metal", "Dragon", "Colorless",
         "Fairy")
_RARITIES = (("Common", 0.5), ("Uncommon", 0.3), ("Rare", 0.12), ("Rare Holo", 0.08))
_TRAINERS = ("Potion", "Ball", "Switch", "Research", "Orders", "Candy", "Energy Search", "Catcher", "Stretcher", "Rod")


def _name(rng: np.random.Generator) -> str:
    n = int(rng.integers(2, 4))
    return "".join(_SYLLABLES[int(i)] for i in rng.integers(0, len(_SYLLABLES), n)).capitalize()


def synthetic_catalogue(n_cards: int, n_sets: int, reprint_fraction: float = 0.1, variant_fraction: float = 0.1,
                        seed: int = 0, card_size: tuple[int, int] = (350, 250)) -> Catalogue:
    """`n_cards` rendered cards in `n_sets` sets; a fraction are reprints (same artwork, other set) or foil variants."""
    if n_cards < 1 or n_sets < 1:
        raise ValueError(f"synthetic_catalogue needs n_cards >= 1 and n_sets >= 1 (got {n_cards}, {n_sets})")
    if not (0 <= reprint_fraction <= 0.5 and 0 <= variant_fraction <= 0.5):
        raise ValueError("reprint_fraction and variant_fraction must each be in [0, 0.5]")
    rng = np.random.default_rng(seed)
    n_rep = int(round(n_cards * reprint_fraction)) if n_sets > 1 else 0
    n_var = int(round(n_cards * variant_fraction))
    n_base = n_cards - n_rep - n_var
    words = [(a, b) for a in _SET_WORDS[0] for b in _SET_WORDS[1]]
    order = rng.permutation(len(words))
    sets = [(f"syn{i + 1}", " ".join(words[order[i % len(words)]]) + ("" if i < len(words) else f" {i // len(words) + 1}"))
            for i in range(n_sets)]
    next_number = [0] * n_sets
    bases: list[dict] = []
    for i in range(n_base):
        s = i % n_sets
        next_number[s] += 1
        kind = rng.random()
        supertype = "Pokémon" if kind < 0.8 else ("Trainer" if kind < 0.95 else "Energy")
        rarity = _RARITIES[int(rng.choice(len(_RARITIES), p=[p for _, p in _RARITIES]))][0]
        if supertype == "Pokémon":
            name, types, hp = _name(rng), (TYPES[int(rng.integers(len(TYPES)))],), int(rng.integers(3, 33)) * 10
        elif supertype == "Trainer":
            name, types, hp = f"{_name(rng)}'s {_TRAINERS[int(rng.integers(len(_TRAINERS)))]}", (), None
        else:
            t = TYPES[int(rng.integers(len(TYPES) - 2))]
            name, types, hp, rarity = f"Basic {t} Energy", (t,), None, "Common"
        bases.append(dict(card_id=f"{sets[s][0]}-{next_number[s]}", name=name, set_id=sets[s][0], set_name=sets[s][1],
                          number=str(next_number[s]), rarity=rarity, variant="holo" if rarity == "Rare Holo" else "normal",
                          artwork_id=f"art{i + 1:05d}", supertype=supertype, types=types, hp=hp, set_idx=s))
    reprints = []
    for k in range(n_rep):
        src = bases[int(rng.integers(len(bases)))]
        s = (src["set_idx"] + 1 + int(rng.integers(n_sets - 1))) % n_sets
        next_number[s] += 1
        rarity = _RARITIES[int(rng.integers(len(_RARITIES)))][0]
        reprints.append({**src, "card_id": f"{sets[s][0]}-{next_number[s]}", "set_id": sets[s][0], "set_name": sets[s][1],
                         "number": str(next_number[s]), "rarity": rarity, "set_idx": s,
                         "variant": "holo" if rarity == "Rare Holo" else "normal"})
    printed = bases + reprints
    variants = []
    pool = rng.permutation(len(printed))
    for k in range(n_var):
        src = printed[int(pool[k % len(pool)])]
        other = [v for v in VARIANTS if v != src["variant"]]
        v = other[int(rng.integers(len(other)))] if src["variant"] == "holo" else ("reverse_holo" if rng.random() < 0.7 else "holo")
        suffix = {"reverse_holo": "rh", "holo": "h", "normal": "n"}[v] + ("" if k < len(pool) else str(k))
        variants.append({**src, "card_id": f"{src['card_id']}-{suffix}", "variant": v})
    cards = []
    for d in printed + variants:
        d = dict(d)
        d.pop("set_idx")
        cards.append(Card(set_total=next_number[int(d["set_id"][3:]) - 1], **d))
    return Catalogue(cards, card_size=card_size, render_seed=seed)


# ---------------------------------------------------------------- scan importers

def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _load_metadata(metadata_dir: Path, card_ids: list[str]) -> dict[str, dict]:
    """card id -> {card json, set json} from the pokemon-tcg-data layout; reads only the sets the ids name."""
    cards_dir = metadata_dir / "cards" / "en"
    if not cards_dir.is_dir():
        raise FileNotFoundError(f"metadata_dir {metadata_dir} has no cards/en/ folder (pokemon-tcg-data layout)")
    sets_file = metadata_dir / "sets" / "en.json"
    sets = {s["id"]: s for s in json.loads(sets_file.read_text())} if sets_file.is_file() else {}
    stems = sorted((p.stem for p in cards_dir.glob("*.json")), key=len, reverse=True)
    wanted = {next((s for s in stems if cid.startswith(s + "-")), None) for cid in card_ids} - {None}
    out = {}
    for stem in wanted:
        for c in json.loads((cards_dir / f"{stem}.json").read_text()):
            out[c["id"]] = {"card": c, "set": sets.get(stem, {"id": stem, "name": stem})}
    return out


def _card_from_metadata(card_id: str, path: Path, meta: dict | None) -> Card:
    if meta is None:
        set_id, _, number = card_id.rpartition("-")
        return Card(card_id, name=card_id, set_id=set_id or card_id, set_name=set_id or card_id, number=number or card_id,
                    set_total=0, rarity="Unknown", source_path=str(path))
    c, s = meta["card"], meta["set"]
    rarity = c.get("rarity") or "Unknown"
    holo = rarity not in ("Common", "Uncommon", "Promo", "Unknown") and any(k in rarity.lower() for k in _HOLO_RARITIES)
    hp = c.get("hp")
    # pokemon-tcg-data has no artwork ids: the same name drawn by the same artist is the closest proxy for a reprint
    artist = c.get("artist")
    return Card(card_id, name=c.get("name", card_id), set_id=s.get("id", ""), set_name=s.get("name", ""),
                number=str(c.get("number", "")), set_total=int(s.get("printedTotal") or s.get("total") or 0),
                rarity=rarity, variant="holo" if holo else "normal",
                artwork_id=f"{_slug(c.get('name', card_id))}~{_slug(artist)}" if artist else card_id,
                supertype=c.get("supertype"), types=tuple(c.get("types") or ()),
                hp=int(hp) if hp and str(hp).isdigit() else None, source_path=str(path))


def scans_catalogue(scans_dir: str | Path, metadata_dir: str | Path | None = None,
                    card_size: tuple[int, int] = (350, 250)) -> Catalogue:
    """Catalogue of `<card_id>.<png|jpg|jpeg|webp>` scans, with names/sets from pokemon-tcg-data JSON when given."""
    scans_dir = Path(scans_dir)
    if not scans_dir.is_dir():
        raise FileNotFoundError(f"scans_dir {scans_dir} is not a folder")
    paths: dict[str, Path] = {}
    for p in sorted(scans_dir.iterdir()):
        if p.suffix.lower() not in IMAGE_EXTS or not p.is_file():
            continue
        cid = validate_card_id(p.stem)
        if cid in paths:
            raise ValueError(f"duplicate card id {cid!r}: both {paths[cid].name} and {p.name} in {scans_dir}")
        paths[cid] = p
    if not paths:
        raise ValueError(f"empty catalogue: no {'/'.join(IMAGE_EXTS)} files in {scans_dir}")
    meta = _load_metadata(Path(metadata_dir), list(paths)) if metadata_dir else {}
    ids = sorted(paths, key=_natural_key)
    return Catalogue([_card_from_metadata(i, paths[i], meta.get(i)) for i in ids], card_size=card_size)


def _natural_key(card_id: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", card_id))


def scans_catalogue_from_store(store, prefix: str, local_cache_dir: str | Path, metadata_dir: str | Path | None = None,
                               card_size: tuple[int, int] = (350, 250)) -> Catalogue:
    """Download the scans under a store prefix (only those not cached yet) and import them like a local folder."""
    cache = Path(local_cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    base = prefix.strip("/")
    keys = [k for k in store.list(prefix) if Path(k).suffix.lower() in IMAGE_EXTS]
    if not keys:
        raise ValueError(f"empty catalogue: no {'/'.join(IMAGE_EXTS)} objects under store prefix {prefix!r}")
    seen: dict[str, str] = {}
    for key in keys:
        name = Path(key).name
        validate_card_id(Path(name).stem)
        if name in seen:
            raise ValueError(f"duplicate scan name {name!r} under {prefix!r}: {seen[name]} and {key}")
        seen[name] = key
        local = cache / name
        if not local.is_file() or local.stat().st_size == 0:
            # list() keys may be relative to the store root or to the prefix; accept both
            full = key if (not base or key.startswith(base + "/")) else f"{base}/{key.lstrip('/')}"
            store.get(full, str(local))
    return scans_catalogue(cache, metadata_dir, card_size)
