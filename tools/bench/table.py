#!/usr/bin/env python3
"""Prints a Markdown table of two bench JSON files side by side: stepstone's and PyTorch's.

    tools/bench/table.py out/bench/stepstone.json out/bench/torch.json
"""

import json
import sys


def key(case):
    return (case["case"], case["size"], case.get("frames"))


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip())
    ours, theirs = (json.load(open(p)) for p in sys.argv[1:])
    by_key = {key(c): c for c in theirs["cases"]}
    print(
        f"stepstone: {ours['device']} ({ours.get('adapter') or '-'}), {ours['dtype']}, {ours['threads']} threads, "
        f"attention {ours.get('attention', '-')}, commit {ours.get('commit')}; PyTorch {theirs['torch']} + diffusers "
        f"{theirs['diffusers']}: {theirs['device']} ({theirs.get('adapter') or '-'}), {theirs['dtype']}, "
        f"{theirs['threads']} threads"
    )
    print()
    print("| case | size | frames | PyTorch min ms | stepstone min ms | stepstone / PyTorch |")
    print("|---|---|---|---|---|---|")
    for case in ours["cases"]:
        other = by_key.get(key(case))
        if other is None:
            print(f"| {case['case']} | {case['size']} | {case.get('frames', '-')} | - | {case['min_ms']:.0f} | - |")
            continue
        ratio = case["min_ms"] / other["min_ms"]
        print(
            f"| {case['case']} | {case['size']} | {case.get('frames', '-')} | {other['min_ms']:.0f} | "
            f"{case['min_ms']:.0f} | {ratio:.2f}x |"
        )
    print()
    print(f"peak RSS: stepstone {ours.get('peak_rss_kb', 0) / 2**20:.2f} GiB, PyTorch {theirs['peak_rss_kb'] / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
