"""What the README and docs/install.md tell an operator to do works: the /etc/recsync
example installs and runs as is, the Dockerfile's pieces are in the repository, and the
README links only to files of the repository."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from recsync.config import load_config

ROOT = Path(__file__).resolve().parent.parent
ETC = "/etc/recsync"


def install_line(doc: Path) -> str:
    """The documented command that installs the configuration files into /etc/recsync."""
    lines = [line for line in doc.read_text().splitlines()
             if line.lstrip().startswith(("install ", "install -d")) and ETC in line
             and ".toml" in line]
    assert len(lines) == 1, lines
    return lines[0].strip()


def test_readme_and_install_guide_install_the_same_example() -> None:
    readme, guide = install_line(ROOT / "README.md"), install_line(ROOT / "docs" / "install.md")
    sources = [w for w in shlex.split(readme) if w.endswith(".toml")]
    assert sources == ["packaging/etc/recsync/customer_settings.toml",
                       "packaging/etc/recsync/rules.toml"]
    assert sources == [w for w in shlex.split(guide) if w.endswith(".toml")]


@pytest.mark.parametrize("doc", ["README.md", "docs/install.md"])
def test_the_etc_example_runs_as_is_from_a_fresh_folder(doc: str, tmp_path: Path) -> None:
    etc, state, fresh = tmp_path / "etc" / "recsync", tmp_path / "state", tmp_path / "fresh"
    fresh.mkdir()
    # the documented steps, with a temporary folder in place of /etc/recsync
    steps = [re.sub(r"(?<![\w.-])/etc/recsync", str(etc), install_line(ROOT / doc))]
    if doc == "docs/install.md":  # its step 2 makes the folder on a line of its own
        steps.insert(0, f"install -d -m 0755 {etc}")
    for step in steps:
        subprocess.run(["bash", "-ec", step], cwd=ROOT, check=True)
    assert sorted(p.name for p in etc.iterdir()) == ["customer_settings.toml", "rules.toml"]
    # a record in the example's file side: it must reach the embedded mock Salesforce
    state.mkdir()
    (state / "example-contacts.jsonl").write_text(json.dumps(
        {"record_id": 1, "full_name": "Ada Lovelace", "email_address": "ada@example.com",
         "status": "active"}) + "\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("STATE_DIRECTORY", "CONFIGURATION_DIRECTORY", "NOTIFY_SOCKET")}
    done = subprocess.run(
        [sys.executable, "-m", "recsync", "--config-dir", str(etc), "--state-dir", str(state),
         "--once", "--timeout", "60"],
        cwd=fresh, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "example/contacts: running" in done.stdout
    assert "example/prospects: running" in done.stdout
    contacts = json.loads((state / "mock-salesforce.json").read_text())["objects"]["Contact"]
    assert [c["LastName"] for c in contacts.values() if c["Record_Id__c"] == "1"] == \
        ["Ada Lovelace"]


def test_the_example_validates_with_the_state_folder_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    config = load_config(ROOT / "packaging" / "etc" / "recsync")
    paths = sorted(str(c.a.options.path) for c in config.pipelines.values())
    assert paths == [f"{tmp_path}/example-contacts.jsonl", f"{tmp_path}/example-prospects.csv"]
    assert {c.b.connector for c in config.pipelines.values()} == {"salesforce", "outreach"}
    assert all(c.b.options.mock for c in config.pipelines.values())


def test_dockerfile_runs_the_example_and_checks_health_statically() -> None:
    """docker cannot run here: the Dockerfile is checked line by line instead."""
    text = (ROOT / "packaging" / "Dockerfile").read_text()
    lines = re.sub(r"\\\n\s*", " ", text).splitlines()
    instructions = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    copies = [shlex.split(ln)[1:] for ln in instructions if ln.startswith("COPY ")]
    for *sources, _dest in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    assert ["packaging/etc/recsync/customer_settings.toml", "packaging/etc/recsync/rules.toml",
            "/etc/recsync/"] in copies
    health = [ln for ln in instructions if ln.startswith("HEALTHCHECK ")]
    assert len(health) == 1 and health[0].endswith('CMD ["recsync", "--timeout", "5", "status"]')
    env = " ".join(ln for ln in instructions if ln.startswith("ENV "))
    assert "STATE_DIRECTORY=/var/lib/recsync" in env and "RUNTIME_DIRECTORY=/run/recsync" in env
    assert instructions[-1] == 'CMD ["recsyncd"]'


def test_readme_links_stay_inside_the_repository() -> None:
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links, "the README links to docs/install.md at least"
    for target in links:
        assert "://" not in target and not target.startswith(("/", "mailto:")), target
        path = target.split("#")[0]
        resolved = (ROOT / path).resolve()
        assert resolved.is_relative_to(ROOT) and resolved.exists(), target
    assert not re.search(r"https?://", text), "no address outside the repository"
    assert "../" not in text, "no path that leaves the repository"
