"""``segmate models list|download ID|import FILE|remove ID|entry FILE``: the model catalogue and cache."""
from __future__ import annotations

import json
from pathlib import Path

from segmatecore.data.atomic import write_text_atomic
from segmatecore.resources import resource_path


def register(sub) -> None:
    p = sub.add_parser("models", help="list, download, import and remove models")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    a = actions.add_parser("list", help="the catalogue and the models installed on this computer")
    a.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a.add_argument("--no-verify", action="store_true", help="skip the SHA-256 check of installed files")
    a.set_defaults(func=run_list)

    a = actions.add_parser("download", help="download a catalogue model into the cache (checked with SHA-256)")
    a.add_argument("id", help="catalogue id (see segmate models list)")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    a.set_defaults(func=run_download)

    a = actions.add_parser("import", help="install a SegMate .safetensors file into the cache after checking it")
    a.add_argument("file", type=Path)
    a.set_defaults(func=run_import)

    a = actions.add_parser("remove", help="delete a downloaded or imported model from the cache")
    a.add_argument("id")
    a.set_defaults(func=run_remove)

    a = actions.add_parser("entry", help="print the catalogue fields of a model file (SHA-256, size, organs, "
                                         "metrics from its metadata); --write stores them in models.json")
    a.add_argument("file", type=Path, help="a SegMate .safetensors model named <id>.safetensors")
    a.add_argument("--metrics", type=Path, help="a JSON file with the held-out metrics in the catalogue's form: "
                   '{"dataset", "cases", "command", "organs": {KEY: {"dice", "hd95_mm"}}}')
    a.add_argument("--cpu-seconds", type=float, help="measured CPU seconds per volume (e.g. from make demo)")
    a.add_argument("--cpu-timing", help="what the CPU time was measured on (volume, CPU, threads, command)")
    a.add_argument("--write", action="store_true",
                   help="update the entry with the same id in the catalogue (Resources/models.json)")
    a.set_defaults(func=run_entry)


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


def _status(item: dict) -> str:
    if not item["installed"]:
        return "not installed" if item["source"] == "download" else "MISSING"
    if "verified" in item and not item["verified"]:
        return "SHA-256 MISMATCH" if item.get("sha256") else "no SHA-256 in the catalogue yet"
    return {"bundled": "bundled", "download": "installed", "imported": "imported"}[item["source"]]


def _dice(item: dict) -> str:
    organs = (item.get("metrics") or {}).get("organs") or {}
    return ", ".join(f"{k} {v['dice']:.2f}" for k, v in organs.items()) or "-"


def run_list(args) -> int:
    from segmatecore.hub.catalogue import cache_dir, list_models

    listing = list_models(verify=not args.no_verify)
    if args.json:
        print(json.dumps({"cache_dir": str(cache_dir()), "models": listing}, indent=2))
        return 0
    for item in listing:
        flags = [f for f, on in (("default", item.get("default")), ("demo, not for clinical use", item.get("demo")))
                 if on]
        print(f"{item['id']}  {item.get('version') or ''}  [{_status(item)}]" + (f"  ({'; '.join(flags)})" if flags else ""))
        print(f"    {item['title']}")
        if item.get("backbone"):
            size = item.get("input_size") or ["?", "?"]
            print(f"    backbone {item['backbone']}, input {size[0]} x {size[1]}, file {_size(item.get('file_size'))}"
                  + (f", licence {item['license']}" if item.get("license") else ""))
            print(f"    trained organs: {', '.join(item['trained_organs'] or ['(not filled in yet)'])}")
        if item.get("metrics"):
            print(f"    Dice on {item['metrics']['dataset']}: {_dice(item)}")
        if item.get("cpu_seconds_per_volume"):
            print(f"    CPU seconds per volume: {item['cpu_seconds_per_volume']:g}")
        print(f"    {item['path']}")
    print(f"cache: {cache_dir()} (set SEGMATE_HOME to use another folder)")
    mismatched = [i["id"] for i in listing if i.get("verified") is False and i["installed"]]
    return 1 if mismatched else 0


def run_download(args) -> int:
    from segmatecore.hub.download import download

    path = download(args.id, progress=not args.quiet)
    print(f"installed {args.id}: {path}")
    return 0


def run_import(args) -> int:
    from segmatecore.hub.download import install_from_file

    path = install_from_file(args.file)
    print(f"installed {path.stem}: {path}")
    return 0


def run_remove(args) -> int:
    from segmatecore.hub.download import remove

    path = remove(args.id)
    print(f"removed {path}")
    return 0


def entry_fields(path: Path) -> dict:
    """The catalogue fields a model file determines: its id, checksum, size and metadata."""
    from segmatecore.hub.catalogue import check_model_file, file_sha256
    from segmatecore.models import backbone_spec

    meta = check_model_file(path)
    fields = {"id": path.stem, "backbone": backbone_spec(meta["backbone"]).key, "organs": meta["organs"],
              "trained_organs": meta.get("trained_organs", meta["organs"]),
              "input_size": meta["preprocessing"]["input_size"], "file_size": path.stat().st_size,
              "sha256": file_sha256(path)}
    if meta.get("metrics"):
        fields["metrics"] = meta["metrics"]
    return fields


def run_entry(args) -> int:
    from segmatecore.hub.catalogue import SCHEMA_FILE, catalogue_path, load_catalogue

    fields = entry_fields(args.file)
    if args.metrics:
        fields["metrics"] = json.loads(args.metrics.read_text(encoding="utf-8"))
    if args.cpu_seconds is not None:
        fields["cpu_seconds_per_volume"] = args.cpu_seconds
    if args.cpu_timing:
        fields["cpu_timing"] = args.cpu_timing
    print(json.dumps(fields, indent=2))
    if not args.write:
        return 0
    import jsonschema  # slow to import; --help stays light

    path = catalogue_path()
    data = json.loads(path.read_text(encoding="utf-8"))
    entry = next((m for m in data["models"] if m["id"] == fields["id"]), None)
    if entry is None:
        raise ValueError(f"{path} has no entry with id {fields['id']!r}; add one (title, version, licence, url, "
                         "demo) first, then run this again.")
    entry.update(fields)
    schema = json.loads(resource_path(SCHEMA_FILE).read_text(encoding="utf-8"))
    try:
        jsonschema.validate(data, schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        print(f"not written: the updated catalogue would be invalid at {where}: {exc.message}")
        return 1
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    load_catalogue()
    print(f"updated {fields['id']} in {path}")
    return 0
