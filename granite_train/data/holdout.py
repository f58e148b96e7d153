"""A held-out split that always measures something, and never takes everything.

Hashing each speaker into or out of a 10% share (what a source's ``holdout_share`` alone does)
holds out nobody at all in 3-4 speakers about two times in three, and everybody now and then.
:func:`plan_holdout` instead looks at the usable records of a :class:`~.check.SourceCheck` and
picks whole groups — speakers when the data names at least two, else recordings (audio path or
id), else a hash of the audio bytes — in a fixed pseudo-random order (a hash of the key), until
the held-out side reaches the requested share of utterances and ``min_utterances``, while at least
one group stays for training. The chosen keys go into both sides' :class:`SourceSpec`
(``holdout_by`` / ``holdout_keys``), so training and scoring see exactly complementary records.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections import defaultdict
from dataclasses import dataclass

from granite_train.data.check import RecordCheck, SourceCheck
from granite_train.data.errors import DataError
from granite_train.data.sources import HOLDOUT_KEYS, SourceSpec


@dataclass
class HoldoutPlan:
    """The held-out split of one source: which keys, and how much it holds on each side."""

    by: str
    keys: list[str]
    held_utterances: int
    held_seconds: float
    train_utterances: int
    train_seconds: float
    groups: int
    note: str = ""

    def apply(self, spec: SourceSpec, mode: str) -> SourceSpec:
        """``spec`` serving one side of this split: ``exclude`` (train) or ``only`` (evaluate)."""
        return dataclasses.replace(
            spec, holdout=mode, holdout_by=self.by, holdout_keys=list(self.keys), holdout_speakers=[]
        )

    def format(self) -> str:
        kind = {"speaker": "speakers", "recording": "recordings", "content": "recordings (by audio content)"}
        shown = ", ".join(self.keys[:8]) + (f", ... ({len(self.keys)} in all)" if len(self.keys) > 8 else "")
        total = self.held_utterances + self.train_utterances
        line = (
            f"held-out split by {self.by}: {len(self.keys)} of {self.groups} {kind[self.by]} ({shown}); "
            f"{self.held_utterances} of {total} utterances ({self.held_seconds / 3600:.3f} h) held out, "
            f"{self.train_utterances} ({self.train_seconds / 3600:.3f} h) train"
        )
        return line + (f"\n  note: {self.note}" if self.note else "")


def _groups(records: list[RecordCheck], by: str) -> dict[str, list[RecordCheck]]:
    groups: dict[str, list[RecordCheck]] = defaultdict(list)
    for record in records:
        groups[record.keys[by]].append(record)
    return groups


def _choose_kind(records: list[RecordCheck], by: str | None) -> tuple[str, str]:
    """The key kind to split on, and a note when it is not the speaker."""
    if by is not None:
        if not all(by in r.keys for r in records):
            missing = sum(by not in r.keys for r in records)
            raise DataError(f"holdout_by={by}: {missing} usable record(s) have no {by} key; "
                            f"use one of {HOLDOUT_KEYS} that every record has")  # fmt: skip
        return by, ""
    for kind in HOLDOUT_KEYS:
        if all(kind in r.keys for r in records):
            distinct = len({r.keys[kind] for r in records})
            if distinct >= 2:
                note = ""
                if kind != "speaker":
                    speakers = {r.keys["speaker"] for r in records if "speaker" in r.keys}
                    note = (
                        f"the data names {len(speakers)} speaker ({', '.join(sorted(speakers))}): held out by {kind}, so the held-out WER measures new recordings of known speakers"
                        if len(speakers) == 1
                        else f"no speaker column: held out by {kind}"
                    )
                return kind, note
    raise DataError(
        f"cannot make a held-out split: the {len(records)} usable record(s) are one speaker and one recording; "
        "give eval_data= (your own test set)"
    )


def plan_holdout(
    check: SourceCheck, share: float, min_utterances: int = 20, by: str | None = None
) -> HoldoutPlan:
    """Choose the held-out keys of ``check``'s usable records (see the module docstring)."""
    if not 0.0 < share < 1.0:
        raise DataError(f"holdout_share must be in (0, 1), got {share}")
    usable = check.usable
    if not usable:
        raise check.error() or DataError(f"source {check.spec.name!r}: nothing usable to split")
    kind, note = _choose_kind(usable, by)
    groups = _groups(usable, kind)
    order = sorted(groups, key=lambda k: (zlib.crc32(k.encode("utf-8")), k))
    # the share, or min_utterances where the share holds fewer, but never more than half the data
    # (beyond the first group, which may be larger)
    target = max(share * len(usable), min(min_utterances, len(usable) // 2))
    held: list[str] = []
    count = 0
    for key in order[:-1]:  # the last group always stays for training
        if held and (count >= target or count + len(groups[key]) > max(target, len(usable) / 2)):
            break
        held.append(key)
        count += len(groups[key])
    held_records = [r for k in held for r in groups[k]]
    train_records = [r for k in order if k not in set(held) for r in groups[k]]
    return HoldoutPlan(
        by=kind,
        keys=sorted(held),
        held_utterances=len(held_records),
        held_seconds=sum(r.seconds or 0.0 for r in held_records),
        train_utterances=len(train_records),
        train_seconds=sum(r.seconds or 0.0 for r in train_records),
        groups=len(groups),
        note=note,
    )


def given_speakers_plan(check: SourceCheck, speakers: list[str]) -> HoldoutPlan:
    """The split the user named (``holdout_speakers``), checked: every speaker is in the data, and
    neither side is empty."""
    usable = check.usable
    present = {r.keys.get("speaker") for r in usable}
    unknown = sorted(set(speakers) - present)
    if unknown:
        known = ", ".join(sorted(s for s in present if s)) or "(no speaker column)"
        raise DataError(
            f"holdout_speakers {unknown} not among the usable records' speakers of {check.spec.name!r}: {known}"
        )
    held = [r for r in usable if r.keys.get("speaker") in speakers]
    train = [r for r in usable if r.keys.get("speaker") not in speakers]
    if not train:
        raise DataError(
            f"holdout_speakers {speakers} are every speaker of {check.spec.name!r}: nothing left to train "
            "on; hold out fewer speakers or give eval_data="
        )
    return HoldoutPlan(
        by="speaker", keys=sorted(speakers), held_utterances=len(held),
        held_seconds=sum(r.seconds or 0.0 for r in held), train_utterances=len(train),
        train_seconds=sum(r.seconds or 0.0 for r in train), groups=len(present),
    )  # fmt: skip


def choose_holdout(
    check: SourceCheck, speakers: list[str], share: float, min_utterances: int = 20
) -> HoldoutPlan:
    """The named ``speakers`` (checked) when given, else :func:`plan_holdout`."""
    return given_speakers_plan(check, speakers) if speakers else plan_holdout(check, share, min_utterances)


__all__ = ["HoldoutPlan", "choose_holdout", "given_speakers_plan", "plan_holdout"]
