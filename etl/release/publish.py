"""`slip-etl publish`: copy a valid release to a local folder, any fsspec URL, or a Hugging Face Hub dataset repo.

Only a release that passes `validate_release` is published (so every manifest path is a regular file inside the
release; each is checked again with `slipio.paths` right before it is read). A local destination that is the
release, lies inside it, contains it, or is an existing file is refused as bad input before anything is written.
Files go up in manifest order with manifest.json last,
so a destination holding a manifest holds the whole release; a destination that already holds a *different*
release is refused (a version names one set of bytes). Embedding banks attached as `embeddings/NAME/` go up
after the release's files (each bank's bank.json last), and the card is redrawn to list them first. The Hub
token comes from the environment (HF_TOKEN) and is never printed or logged; errors from the Hub are scrubbed of it.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from etl.release.card import list_banks_in_card
from etl.release.validate import validate_release
from schemas import bank as bank_contract
from slipio.inputs import InputError
from slipio.paths import UnsafePath, resolve_inside

HF_PATTERN = re.compile(r"^hf://datasets/([A-Za-z0-9][A-Za-z0-9._-]*)/([A-Za-z0-9][A-Za-z0-9._-]*)/?$")
TOKEN_ENV = "HF_TOKEN"


class PublishError(RuntimeError):
    """The release cannot be published as asked; the message says why and what to do."""


class BadDestination(PublishError, InputError):
    """The destination itself is wrong (malformed, the release itself, inside it, a file): bad input, exit 2."""


@dataclass(frozen=True)
class Destination:
    """Where a release goes: kind `hf` (repo_id ORG/NAME), `fsspec` (a URL) or `local` (a folder path)."""

    kind: str
    target: str

    def url_of(self, rel: str) -> str:
        base = f"https://huggingface.co/datasets/{self.target}" if self.kind == "hf" else self.target
        return f"{base.rstrip('/')}/{rel}"


def parse_destination(dest: str) -> Destination:
    """hf://datasets/ORG/NAME -> the Hub; PROTOCOL://... -> fsspec; anything else -> a local folder."""
    if dest.startswith("hf://"):
        match = HF_PATTERN.match(dest)
        if not match:
            raise BadDestination(f"{dest!r}: a Hugging Face destination must be hf://datasets/ORG/NAME")
        return Destination("hf", f"{match.group(1)}/{match.group(2)}")
    if "://" in dest:
        protocol = dest.split("://", 1)[0]
        if protocol not in fsspec.available_protocols():
            raise BadDestination(f"{dest!r}: unknown fsspec protocol {protocol!r}")
        return Destination("fsspec", dest)
    if not dest.strip():
        raise BadDestination("the destination is empty")
    return Destination("local", str(Path(dest).expanduser().resolve()))


def publish_release(release: Path, dest: str, dry_run: bool = False) -> Iterator[str]:
    """Validate `release` and parse `dest` now (PublishError on refusal); the returned iterator does the upload
    (or, with dry_run, only lists it) and yields one line per step."""
    release = Path(release)
    if not dry_run:
        _list_banks(release)
    problems = validate_release(release)
    if problems:
        shown = "\n  ".join(problems[:30])
        more = f"\n  ... {len(problems) - 30} more" if len(problems) > 30 else ""
        raise PublishError(f"{release} is not a valid release ({len(problems)} problem(s)); fix or rebuild it "
                           f"(slip-etl validate {release}):\n  {shown}{more}")
    destination = parse_destination(dest)
    local = _local_path(destination)
    if local is not None:
        check_local_destination(release, local, dest)
    manifest = json.loads((release / "manifest.json").read_text(encoding="utf-8"))
    files = [(rel, meta["bytes"]) for rel, meta in sorted(manifest["files"].items())]
    files += bank_files(release)
    files.append(("manifest.json", (release / "manifest.json").stat().st_size))
    for rel, _ in files:  # validate_release checked these already; a publish never rests on that alone
        try:
            resolve_inside(release, rel)
        except UnsafePath as exc:
            raise PublishError(f"{release}: manifest.json lists an unsafe path ({exc}); nothing was published") \
                from None
    token = os.environ.get(TOKEN_ENV) or None
    if dry_run:
        return _dry_run(destination, files, token is not None)
    if destination.kind == "hf":
        if token is None:
            raise PublishError(f"{TOKEN_ENV} is not set: create a write token at "
                               f"https://huggingface.co/settings/tokens and export {TOKEN_ENV}=... (it is read "
                               f"from the environment only, never from the command line)")
        return _to_hub(release, destination, manifest, files, token)
    return _to_filesystem(release, destination, files)


def _list_banks(release: Path) -> None:
    """The card lists the attached embedding banks before it goes up (README.md re-signed in manifest.json)."""
    try:
        list_banks_in_card(release)
    except OSError as exc:
        raise PublishError(f"{release}: cannot list its embedding banks in README.md ({exc.strerror or exc}); "
                           f"make the release writable or publish a copy") from None


def bank_files(release: Path) -> list[tuple[str, int]]:
    """(path, bytes) of every attached embedding bank's files, bank.json last in each: the banks are signed by
    their own bank.json (which validate_release checked), not by the release manifest."""
    out = []
    for folder in bank_contract.attached_banks(release):
        rel = folder.relative_to(release).as_posix()
        for name in [*bank_contract.ARRAYS, bank_contract.MANIFEST]:
            out.append((f"{rel}/{name}", (folder / name).stat().st_size))
    return out


def _local_path(destination: Destination) -> Path | None:
    """The destination's folder on this machine (a plain path or a file:// URL), else None."""
    if destination.kind == "local":
        return Path(destination.target)
    if destination.kind == "fsspec":
        fs, path = fsspec.core.url_to_fs(destination.target)
        if isinstance(fs, LocalFileSystem):
            return Path(path).resolve()
    return None


def check_local_destination(release: Path, dest: Path, shown: str) -> None:
    """Refuse a local destination that would overwrite or grow the release it copies, or that cannot be a folder."""
    source, dest = release.resolve(), dest.resolve()
    if dest == source:
        raise BadDestination(f"--to {shown}: is the release itself; publish to another folder")
    if dest.is_relative_to(source):
        raise BadDestination(f"--to {shown}: lies inside the release {release}; the copy would add files to the "
                             f"release it copies: publish to a folder outside it")
    if source.is_relative_to(dest):
        raise BadDestination(f"--to {shown}: contains the release {release}; publish to a folder outside it")
    for folder in (dest, *dest.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "is an existing file" if folder == dest else f"has a file on its way ({folder})"
                raise BadDestination(f"--to {shown}: {what}, not a folder; give a new or an existing folder")
            break


def _dry_run(destination: Destination, files: list[tuple[str, int]], has_token: bool) -> Iterator[str]:
    for rel, size in files:
        yield f"would upload {rel} ({size} bytes) -> {destination.url_of(rel)}"
    if destination.kind == "hf":
        yield (f"{TOKEN_ENV} is {'set' if has_token else 'NOT set (a real run would stop)'}; the repo would be "
               f"created if missing and the release tagged with its version")
    yield (f"dry run: {len(files)} files, {sum(s for _, s in files)} bytes would go to "
           f"{destination.url_of('').rstrip('/')}; nothing was uploaded")


def _to_filesystem(release: Path, destination: Destination, files: list[tuple[str, int]]) -> Iterator[str]:
    if destination.kind == "local":
        fs, root = fsspec.filesystem("file"), destination.target
    else:
        fs, root = fsspec.core.url_to_fs(destination.target)
    root = root.rstrip("/")
    _refuse_other_release(fs, f"{root}/manifest.json", (release / "manifest.json").read_bytes(),
                          destination.target)
    for rel, size in files:
        source = resolve_inside(release, rel)  # checked again right before it is read: no symlink, no host file
        remote = f"{root}/{rel}"
        parent = remote.rsplit("/", 1)[0]
        try:
            fs.makedirs(parent, exist_ok=True)
            fs.put_file(str(source), remote)
        except OSError as exc:
            raise PublishError(f"{destination.url_of(rel)}: cannot write ({exc.strerror or exc})") from None
        if fs.size(remote) != size:
            raise PublishError(f"{destination.url_of(rel)}: {fs.size(remote)} bytes after upload, expected {size}")
        yield f"uploaded {rel} ({size} bytes) -> {destination.url_of(rel)}"
    yield f"published {len(files)} files ({sum(s for _, s in files)} bytes) to {destination.target}"


def _refuse_other_release(fs: Any, manifest_path: str, ours: bytes, shown: str) -> None:
    if not fs.exists(manifest_path):
        return
    with fs.open(manifest_path, "rb") as fh:
        theirs = fh.read()
    if theirs != ours:
        try:
            other = json.loads(theirs)
            what = f"{other.get('name')} {other.get('version')}"
        except (json.JSONDecodeError, AttributeError):
            what = "an unreadable manifest"
        raise PublishError(f"{shown} already holds a different release ({what}); publish to another destination")


def _to_hub(release: Path, destination: Destination, manifest: dict[str, Any], files: list[tuple[str, int]],
            token: str) -> Iterator[str]:
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id, version = destination.target, manifest["version"]
    try:
        api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
        yield f"dataset repo {repo_id} ready"
        api.upload_folder(repo_id=repo_id, folder_path=str(release), repo_type="dataset",
                          commit_message=f"{manifest['name']} {version}")
        yield (f"uploaded {len(files)} files ({sum(s for _, s in files)} bytes) to "
               f"{destination.url_of('').rstrip('/')}")
        api.create_tag(repo_id, tag=version, repo_type="dataset", exist_ok=True)
        yield f"tagged {repo_id} with {version}"
    except Exception as exc:  # noqa: BLE001 - every Hub/network failure becomes one clear refusal
        message = str(exc).replace(token, "***")
        raise PublishError(f"Hugging Face Hub ({repo_id}): {type(exc).__name__}: {message}") from None
