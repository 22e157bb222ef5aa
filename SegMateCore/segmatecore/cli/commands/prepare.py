"""``segmate prepare KIND SRC -o OUT``: canonical, memory-mappable training arrays with splits."""
from __future__ import annotations

from segmatecore.data.sources import KINDS


def register(sub) -> None:
    p = sub.add_parser("prepare", help="convert a dataset into SegMate training arrays with patient-level splits")
    p.add_argument("kind", choices=KINDS, help="dataset layout")
    p.add_argument("src", help="dataset folder")
    p.add_argument("-o", "--output", required=True, help="output folder (cases already there are kept)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all CPU cores)")
    p.add_argument("--seed", type=int, default=0, help="seed of the patient-level split (default 0)")
    p.add_argument("--fractions", type=float, nargs=3, default=(0.75, 0.15, 0.10), metavar=("TRAIN", "VAL", "TEST"),
                   help="split fractions for cases the dataset does not assign (default 0.75 0.15 0.10)")
    p.add_argument("--all-train", action="store_true", help="put every case in the train split")
    p.add_argument("--cases", nargs="+", default=None, help="prepare only these case ids")
    p.set_defaults(func=run)


def run(args) -> int:
    from segmatecore.data.prepare import prepare

    index = prepare(args.kind, args.src, args.output, workers=args.workers, seed=args.seed,
                    fractions=tuple(args.fractions), all_train=args.all_train, only=args.cases)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in index["splits"].items())
    print(f"{len(index['cases'])} cases prepared in {args.output} ({sizes}); {len(index['failures'])} failed")
    return 1 if index["failures"] else 0
