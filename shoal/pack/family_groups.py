"""Family members cut into device-sized groups, packed like models (see ``families.py`` for why).

Its own module because a group is itself a one-type ``Demands``: ``demand.py`` imports
``families.py``, and this module imports both.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from shoal.pack.demand import Demands
from shoal.pack.families import TOL


@dataclass
class Chunks:
    """Family members cut into device-sized groups plus the other models alone, as one-type demands."""

    demands: Demands
    groups: list[list[int]]

    def expand(self, bins: list[list[int]]) -> list[list[int]]:
        return [[m for c in b for m in self.groups[c]] for b in bins]


def chunk(d: Demands, items: np.ndarray, t: int, scale: float = 1.0) -> Chunks:
    """Cut each family's members (on type ``t``) into as few groups as ``scale`` of a device allows.

    First-fit decreasing into room whose memory is already short by the family's shared bytes. At
    scale 1 every group but the last fills a device, the right cut when families fill devices; a
    smaller scale cuts compute-heavy families into pieces that fill the compute left beside
    memory-heavy models, paying the shared bytes once per piece's device. A group's demand is its
    members' own demand plus the shared bytes once; a member too large for the scaled room gets a
    group of its own (it fits a device alone).
    """
    fam = d.families
    assert fam is not None
    groups: list[list[int]] = []
    mem: list[float] = []
    comp: list[float] = []
    by_family: dict[int, list[int]] = defaultdict(list)
    for i in items:
        f = int(fam.of[i])
        if f < 0:
            groups.append([int(i)])
            mem.append(float(d.mem[i, t]))
            comp.append(float(d.comp[i, t]))
        else:
            by_family[f].append(int(i))
    for f, members in by_family.items():
        idx = np.asarray(members)
        m, c = d.mem[idx, t], d.comp[idx, t]
        order = np.argsort(-np.maximum(m / d.max_memory, c / d.max_compute), kind="stable")
        room_m = scale * (d.max_memory - fam.shared[f, t])
        room_c = scale * d.max_compute
        lm: list[float] = []
        lc: list[float] = []
        mine: list[list[int]] = []
        for k in order:
            for b in range(len(mine)):
                if lm[b] + m[k] <= room_m + TOL and lc[b] + c[k] <= room_c + TOL:
                    break
            else:
                b = len(mine)
                mine.append([])
                lm.append(0.0)
                lc.append(0.0)
            mine[b].append(int(idx[k]))
            lm[b] += float(m[k])
            lc[b] += float(c[k])
        groups += mine
        mem += [x + float(fam.shared[f, t]) for x in lm]
        comp += lc
    one = Demands([f"group-{g}" for g in range(len(groups))], [d.types[t]], np.asarray(mem)[:, None],
                  np.asarray(comp)[:, None], np.ones((len(groups), 1), dtype=bool), d.max_memory, d.max_compute)
    return Chunks(one, groups)
