"""git_facts in real temporary repositories: branches, merges, clones, worktrees, detached HEAD."""

from __future__ import annotations

from pathlib import Path

import pytest

from memoray import gitfacts
from memoray.gitfacts import git_facts, normalize_remote_url, parse_git_config
from tests.gitutil import git, isolate_git


@pytest.fixture(autouse=True)
def isolated_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_git(tmp_path, monkeypatch)
    gitfacts.clear_cache()




def commit(repo: Path, name: str) -> str:
    (repo / name).write_text(name + "\n")
    git(repo, "add", name)
    git(repo, "commit", "-qm", name)
    return git(repo, "rev-parse", "HEAD")


def fresh(cwd: Path, **kw: bool) -> gitfacts.GitFacts:
    gitfacts.clear_cache()
    return git_facts(str(cwd), **kw)


@pytest.mark.parametrize("url,expected", [
    ("https://github.com/Org/Repo.git", "github.com/org/repo"),
    ("https://github.com/org/repo", "github.com/org/repo"),
    ("https://github.com/org/repo/", "github.com/org/repo"),
    ("git@github.com:Org/Repo.git", "github.com/org/repo"),
    ("ssh://git@github.com/org/repo", "github.com/org/repo"),
    ("ssh://git@GitHub.com:22/org/repo.git", "github.com/org/repo"),
    ("https://user:s3cret@github.com/Org/Repo.git", "github.com/org/repo"),
    ("https://x-access-token:ghs_abc@GITHUB.COM//org//repo.git", "github.com/org/repo"),
    ("git://gitlab.example.com/group/sub/proj.git", "gitlab.example.com/group/sub/proj"),
    ("http://git.corp:8080/team/app", "git.corp/team/app"),
    ("gitlab.com:group/proj.git", "gitlab.com/group/proj"),
    ("ssh://git@host.xz/~user/path/to/repo.git", "host.xz/user/path/to/repo"),
    ("https://dev.azure.com/Org/Proj/_git/Repo", "dev.azure.com/org/proj/_git/repo"),
    ("/srv/git/Project.git", "file:///srv/git/Project"),
    ("file:///srv/git/project.git/", "file:///srv/git/project"),
    ("", None),
])
def test_normalize_remote_url(url: str, expected: str | None) -> None:
    assert normalize_remote_url(url) == expected


def test_parse_git_config() -> None:
    cfg = parse_git_config('[core]\n\tbare = false\n[remote "origin"]\n\turl = git@h:a/b.git\n'
                           '\tfetch = +refs/heads/*:refs/remotes/origin/*\n# c\n'
                           '[branch "feat/x"]\n\tremote = origin\n\tmerge = refs/heads/feat/x\n')
    assert cfg["remote.origin.url"] == "git@h:a/b.git"
    assert cfg["branch.feat/x.merge"] == "refs/heads/feat/x"
    assert cfg["core.bare"] == "false"


def test_outside_a_repo(tmp_path: Path) -> None:
    facts = fresh(tmp_path)
    assert facts.root is None and facts.branch is None and facts.commit is None
    assert facts.workspace_id == f"local:{tmp_path}"
    assert facts.visible_branches() == ()


def test_empty_repo_without_remote(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    facts = fresh(repo)
    assert facts.root == str(repo.resolve())
    assert facts.workspace_id == f"local:{repo.resolve()}"
    assert facts.branch == "main" and facts.commit is None
    assert facts.merged_branches == () and facts.remote_url is None


def test_branches_merges_and_subdirectories(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "a")
    git(repo, "checkout", "-qb", "fix/login")
    commit(repo, "b")
    git(repo, "checkout", "-q", "main")
    git(repo, "merge", "-q", "--no-ff", "-m", "merge", "fix/login")
    git(repo, "checkout", "-qb", "topic")
    git(repo, "checkout", "-qb", "side", "main~1")  # before the merge
    commit(repo, "c")
    git(repo, "checkout", "-q", "topic")
    (repo / "pkg" / "sub").mkdir(parents=True)

    facts = fresh(repo / "pkg" / "sub")
    assert facts.root == str(repo.resolve())
    assert facts.branch == "topic" and facts.commit == git(repo, "rev-parse", "HEAD")
    assert facts.default_branch == "main"
    assert facts.merged_branches == ("fix/login", "main", "topic")
    assert facts.visible_branches() == ("topic", "fix/login", "main")
    assert facts.upstream is None and facts.ahead is None

    git(repo, "checkout", "-q", "side")
    facts = fresh(repo)
    assert facts.branch == "side"
    assert "fix/login" not in facts.merged_branches and "side" in facts.merged_branches
    assert facts.visible_branches() == ("side", "main")  # default branch always visible

    cheap = fresh(repo, detailed=False)
    assert cheap.branch == "side" and cheap.merged_branches == ()


def test_detached_head_and_packed_refs(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    first = commit(repo, "a")
    second = commit(repo, "b")
    git(repo, "pack-refs", "--all")
    assert not (repo / ".git" / "refs" / "heads" / "main").exists()
    assert fresh(repo).commit == second  # read from packed-refs
    git(repo, "checkout", "-q", "--detach", first)
    facts = fresh(repo)
    assert facts.branch is None and facts.commit == first
    assert facts.merged_branches == ()  # main is ahead of HEAD, so not merged into it
    assert facts.visible_branches() == ("main",)


def test_clones_of_one_remote_share_a_workspace(tmp_path: Path) -> None:
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    seed = tmp_path / "seed"
    git(tmp_path, "clone", "-q", str(remote), str(seed))
    git(seed, "checkout", "-qb", "main")
    commit(seed, "a")
    git(seed, "push", "-q", "origin", "main")
    one, two = tmp_path / "one", tmp_path / "two"
    git(tmp_path, "clone", "-q", str(remote), str(one))
    git(tmp_path, "clone", "-q", str(remote), str(two))

    f1, f2 = fresh(one), fresh(two)
    assert f1.workspace_id == f2.workspace_id == f"file://{remote.with_suffix('')}"
    assert f1.root != f2.root
    assert f1.remote_url == str(remote)
    assert f1.default_branch == "main" and f1.upstream == "origin/main"
    assert (f1.ahead, f1.behind) == (0, 0)

    commit(one, "b")
    commit(one, "c")
    commit(two, "d")
    git(two, "push", "-q", "origin", "main")
    git(one, "fetch", "-q")
    facts = fresh(one)
    assert (facts.ahead, facts.behind) == (2, 1)


def test_linked_worktree(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "remote", "add", "origin", "git@github.com:Acme/Widget.git")
    commit(repo, "a")
    wt = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "wt-branch", str(wt))
    commit(wt, "b")
    facts = fresh(wt)
    assert (wt / ".git").is_file()
    assert facts.root == str(wt.resolve())
    assert facts.branch == "wt-branch" and facts.commit == git(wt, "rev-parse", "HEAD")
    assert facts.workspace_id == "github.com/acme/widget"  # from the main repository's config
    assert facts.merged_branches == ("main", "wt-branch")


def test_degrades_without_git_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    sha = commit(repo, "a")
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    facts = fresh(repo)
    assert facts.branch == "main" and facts.commit == sha  # read from files
    assert facts.merged_branches == () and facts.ahead is None


def test_results_are_cached_per_process(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "a")
    first = fresh(repo)
    git(repo, "checkout", "-qb", "other")
    assert git_facts(str(repo)) is first
    assert fresh(repo).branch == "other"


def test_broken_git_dir_never_raises(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    repo.mkdir()
    (repo / ".git").write_text("gitdir: /does/not/exist\n")
    facts = fresh(repo)
    assert facts.root is None and facts.workspace_id == f"local:{repo}"
    weird = tmp_path / "w"
    (weird / ".git").mkdir(parents=True)
    (weird / ".git" / "HEAD").write_text("garbage")
    facts = fresh(weird)
    assert facts.branch is None and facts.commit is None


def test_branch_filter_hides_uncommitted_work_of_a_branch_with_no_commits(tmp_path):
    """`git branch --merged` counts a fresh branch as merged; its memories (captured at the
    fork commit, before any commit of its own) must stay hidden until its work is committed
    and merged, fast-forward included."""
    from memoray import filters as flt

    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "a")
    base_sha = git(repo, "rev-parse", "HEAD")
    git(repo, "branch", "feature")  # no commits of its own yet
    node = flt.parse_filter(fresh(repo).branch_filter())
    memory = {"git_branch": "feature", "git_commit": base_sha}
    assert not flt.matches(node, memory)
    assert flt.matches(node, {"git_branch": "main", "git_commit": base_sha})
    assert flt.matches(node, {"git_branch": None})

    git(repo, "checkout", "-q", "feature")
    commit(repo, "b")
    git(repo, "checkout", "-q", "main")
    assert not flt.matches(flt.parse_filter(fresh(repo).branch_filter()), memory)  # unmerged
    git(repo, "merge", "-q", "--ff-only", "feature")  # a fast-forward merge
    assert flt.matches(flt.parse_filter(fresh(repo).branch_filter()), memory)


def visible(repo: Path, memory: dict) -> bool:
    from memoray import filters as flt

    node = flt.parse_filter(fresh(repo).branch_filter())
    return flt.matches(node, {"metadata": {}, **memory})


def test_merged_branch_outcome_at_its_tip_is_visible_unmerged_work_never(tmp_path):
    """A summary captured at a branch's tip with its work committed (`metadata.committed`) shows
    once the branch is merged; what was captured at a tip with uncommitted changes never does:
    a fresh branch, and new work on a branch merged earlier."""
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "a")
    git(repo, "checkout", "-q", "-b", "feature")
    (repo / "wip.py").write_text("x = 1\n")  # uncommitted
    assert gitfacts.work_committed(str(repo)) is False
    base = git(repo, "rev-parse", "HEAD")
    fresh_work = {"git_branch": "feature", "git_commit": base,
                  "metadata": {"committed": False}}
    git(repo, "add", "wip.py")
    git(repo, "commit", "-qm", "wip")
    gitfacts.clear_cache()
    assert gitfacts.work_committed(str(repo)) is True  # clean, and commits of its own
    tip = git(repo, "rev-parse", "HEAD")
    outcome = {"git_branch": "feature", "git_commit": tip, "metadata": {"committed": True}}
    git(repo, "checkout", "-q", "main")
    assert not visible(repo, outcome) and not visible(repo, fresh_work)  # not merged yet
    git(repo, "merge", "-q", "--no-ff", "-m", "Merge branch 'feature'", "feature")
    assert visible(repo, outcome), "the branch's outcome must survive its merge"
    assert visible(repo, fresh_work)  # its work was committed after it: merged now
    # new uncommitted work on the merged branch, captured at the merged tip: hidden
    after = {"git_branch": "feature", "git_commit": tip, "metadata": {"committed": False}}
    assert not visible(repo, after)
    # a fresh branch with no commits of its own: nothing of it shows, committed flag or not
    git(repo, "branch", "spike")
    gitfacts.clear_cache()
    git(repo, "checkout", "-q", "spike")
    assert gitfacts.work_committed(str(repo)) is False  # clean, but no commits of its own
    git(repo, "checkout", "-q", "main")
    head = git(repo, "rev-parse", "HEAD")
    assert not visible(repo, {"git_branch": "spike", "git_commit": head,
                              "metadata": {"committed": False}})


def test_deleted_and_remote_only_branches_count_through_merge_commits_and_remotes(tmp_path):
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    a = tmp_path / "a"
    git(tmp_path, "clone", "-q", str(remote), str(a))
    git(a, "checkout", "-q", "-b", "main")
    commit(a, "a")
    git(a, "checkout", "-q", "-b", "feature/x")
    x_first = commit(a, "x1")
    x_tip = commit(a, "x2")
    git(a, "checkout", "-q", "main")
    git(a, "merge", "-q", "--no-ff", "-m", "Merge branch 'feature/x'", "feature/x")
    git(a, "branch", "-q", "-D", "feature/x")  # deleted after its merge
    assert ("feature/x", x_tip) in fresh(a).merged_tips
    assert visible(a, {"git_branch": "feature/x", "git_commit": x_first})
    # a second clone sees a pushed, merged branch through its remote-tracking ref
    git(a, "checkout", "-q", "-b", "feature/y")
    y_first = commit(a, "y1")
    commit(a, "y2")
    git(a, "push", "-q", "origin", "main", "feature/y")
    b = tmp_path / "b"
    git(tmp_path, "clone", "-q", str(remote), str(b))
    assert not visible(b, {"git_branch": "feature/y", "git_commit": y_first})  # not merged
    git(a, "checkout", "-q", "main")
    git(a, "merge", "-q", "--ff-only", "feature/y")
    git(a, "push", "-q", "origin", "main")
    git(b, "pull", "-q", "origin", "main")
    assert visible(b, {"git_branch": "feature/y", "git_commit": y_first})


def test_squash_merge_is_detected_by_patch_id(tmp_path):
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "a")
    git(repo, "checkout", "-q", "-b", "feature/sq")
    first = commit(repo, "s1")
    tip = commit(repo, "s2")
    git(repo, "checkout", "-q", "main")
    commit(repo, "unrelated")  # main moved on meanwhile
    memory = {"git_branch": "feature/sq", "git_commit": first}
    assert not visible(repo, memory)
    git(repo, "merge", "-q", "--squash", "feature/sq")
    git(repo, "commit", "-qm", "Squashed feature (#12)")
    assert ("feature/sq", tip) in fresh(repo).merged_tips
    assert visible(repo, memory)
    assert visible(repo, {"git_branch": "feature/sq", "git_commit": tip,
                          "metadata": {"committed": True}})
    # another branch with a different change is not taken for squash-merged
    git(repo, "checkout", "-q", "-b", "feature/other")
    other = commit(repo, "o1")
    commit(repo, "o2")
    git(repo, "checkout", "-q", "main")
    assert not visible(repo, {"git_branch": "feature/other", "git_commit": other})


def test_squash_verdicts_are_cached_and_bounded_per_run(tmp_path, monkeypatch):
    """A hook works out at most SQUASH_FRESH_PER_RUN patch-id checks; verdicts persist in a
    file, so later hooks reuse them; an unchecked branch counts as unmerged (never a leak)."""
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "a")
    for b in ("one", "two", "three"):
        git(repo, "checkout", "-q", "-b", f"sq/{b}", "main")
        commit(repo, f"{b}.txt")
    git(repo, "checkout", "-q", "main")
    for b in ("one", "two", "three"):
        git(repo, "merge", "-q", "--squash", f"sq/{b}")
        git(repo, "commit", "-qm", f"squash {b}")
    monkeypatch.setattr(gitfacts, "SQUASH_CACHE", {})
    monkeypatch.setattr(gitfacts, "SQUASH_FRESH_PER_RUN", 2)
    first = {n for n, _ in fresh(repo).merged_tips if n.startswith("sq/")}
    assert len(first) == 2  # two checked this run; the third waits (counted unmerged)
    cache = tmp_path / "squash-cache.json"
    gitfacts.save_squash_cache(cache)
    monkeypatch.setattr(gitfacts, "SQUASH_CACHE", {})
    gitfacts.load_squash_cache(cache)
    monkeypatch.setattr(gitfacts, "SQUASH_FRESH_PER_RUN", 1)
    assert {n for n, _ in fresh(repo).merged_tips if n.startswith("sq/")} == {
        "sq/one", "sq/two", "sq/three"}
    # a branch off an older main does not hold the squash commits: not merged there
    git(repo, "checkout", "-q", "-b", "old", "main~3")
    assert not {n for n, _ in fresh(repo).merged_tips if n.startswith("sq/")}


def test_work_committed_ignores_claude_local_files(tmp_path):
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "a")
    (repo / ".claude").mkdir()
    (repo / ".claude" / "settings.local.json").write_text("{}")
    assert gitfacts.work_committed(str(repo)) is True
    (repo / "new_module.py").write_text("x = 1\n")  # a new file of the agent's: uncommitted work
    gitfacts.clear_cache()
    assert gitfacts.work_committed(str(repo)) is False


def _count_git_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    runs: list[str] = []
    real = gitfacts._git

    def counted(root: Path, *args: str) -> str | None:
        runs.append(args[0])
        return real(root, *args)

    monkeypatch.setattr(gitfacts, "_git", counted)
    return runs


def test_detailed_facts_are_reused_until_a_ref_moves(tmp_path, monkeypatch):
    """The detailed facts' git work is kept in DETAIL_CACHE (a file: what a later hook process
    reads) under HEAD and the refs' fingerprint. Nothing moved: no git run, the same facts. A
    merge (HEAD moves), a branch created at an old commit or deleted, refs packed: git runs
    again and the answer is right."""
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    base = commit(repo, "a")
    git(repo, "checkout", "-q", "-b", "feature/x")
    x_tip = commit(repo, "x1")
    git(repo, "checkout", "-q", "main")
    commit(repo, "b")
    monkeypatch.setattr(gitfacts, "DETAIL_CACHE", tmp_path / "spool" / "git-facts.json")
    runs = _count_git_runs(monkeypatch)
    first = fresh(repo)
    assert runs and "feature/x" not in dict(first.merged_tips)
    runs.clear()
    assert fresh(repo) == first and runs == []  # nothing moved: read from the file
    git(repo, "merge", "-q", "--no-ff", "-m", "Merge branch 'feature/x'", "feature/x")
    runs.clear()
    merged = fresh(repo)
    assert runs and dict(merged.merged_tips)["feature/x"] == x_tip
    git(repo, "branch", "old", base)  # HEAD stays; a branch appears at a merged commit
    runs.clear()
    assert dict(fresh(repo).merged_tips).get("old") == base and runs
    git(repo, "branch", "-q", "-D", "old")
    runs.clear()
    assert "old" not in dict(fresh(repo).merged_tips) and runs
    git(repo, "pack-refs", "--all")
    runs.clear()
    packed = fresh(repo)
    assert runs and dict(packed.merged_tips)["feature/x"] == x_tip
    runs.clear()
    assert fresh(repo) == packed and runs == []


def test_detailed_facts_with_squash_checks_left_are_not_cached(tmp_path, monkeypatch):
    """A squash pass that left branches unchecked (SQUASH_FRESH_PER_RUN) is not kept: the
    next hook works out the rest instead of reusing a partial answer."""
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "a")
    for b in ("one", "two"):
        git(repo, "checkout", "-q", "-b", f"sq/{b}", "main")
        commit(repo, f"{b}.txt")
    git(repo, "checkout", "-q", "main")
    for b in ("one", "two"):
        git(repo, "merge", "-q", "--squash", f"sq/{b}")
        git(repo, "commit", "-qm", f"squash {b}")
    monkeypatch.setattr(gitfacts, "SQUASH_CACHE", {})
    monkeypatch.setattr(gitfacts, "SQUASH_FRESH_PER_RUN", 1)
    monkeypatch.setattr(gitfacts, "DETAIL_CACHE", tmp_path / "spool" / "git-facts.json")
    runs = _count_git_runs(monkeypatch)
    assert len([n for n, _ in fresh(repo).merged_tips if n.startswith("sq/")]) == 1
    runs.clear()
    assert {n for n, _ in fresh(repo).merged_tips if n.startswith("sq/")} == {
        "sq/one", "sq/two"}
    assert runs  # worked out, not read back
    runs.clear()
    fresh(repo)
    assert runs == []  # complete now: kept
