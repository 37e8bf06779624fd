"""available_memory(): MemAvailable, or the memory cgroup's headroom where it is smaller (v1 and
v2, nested cgroups, no limit), read from fake /proc and /sys trees."""
import os

from gemma3n_rt.planner import available_memory, cgroup_headroom

GiB = 1 << 30


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def fake(tmp_path, meminfo_gib=16, cgroup="0::/\n"):
    write(tmp_path / "meminfo", f"MemTotal: 24000000 kB\nMemFree: 1 kB\nMemAvailable: {meminfo_gib * GiB // 1024} kB\n")
    write(tmp_path / "self_cgroup", cgroup)
    return dict(meminfo=str(tmp_path / "meminfo"), cgroup_root=str(tmp_path / "sys"), proc_cgroup=str(tmp_path / "self_cgroup"))


def test_no_cgroup_limit_is_mem_available(tmp_path):
    paths = fake(tmp_path, cgroup="4:memory:/app\n0::/\n")
    write(tmp_path / "sys/memory/app/memory.limit_in_bytes", "9223372036854771712\n")   # v1 "no limit"
    write(tmp_path / "sys/memory/app/memory.usage_in_bytes", str(3 * GiB))
    assert cgroup_headroom(paths["cgroup_root"], paths["proc_cgroup"]) is None
    assert available_memory(**paths) == 16 * GiB


def test_v1_limit_minus_usage_with_inactive_file_given_back(tmp_path):
    paths = fake(tmp_path, cgroup="9:name=systemd:/\n4:memory:/phone/app\n0::/\n")
    d = tmp_path / "sys/memory/phone/app"
    write(d / "memory.limit_in_bytes", str(2 * GiB))
    write(d / "memory.usage_in_bytes", str(GiB))
    write(d / "memory.stat", f"cache 5\ntotal_cache 9\ntotal_inactive_file {GiB // 4}\n")
    assert available_memory(**paths) == 2 * GiB - GiB + GiB // 4


def test_v1_parent_limit_is_tighter(tmp_path):
    paths = fake(tmp_path, cgroup="4:memory:/phone/app\n")
    write(tmp_path / "sys/memory/phone/memory.limit_in_bytes", str(GiB))
    write(tmp_path / "sys/memory/phone/memory.usage_in_bytes", str(GiB // 2))
    write(tmp_path / "sys/memory/phone/app/memory.limit_in_bytes", str(4 * GiB))
    write(tmp_path / "sys/memory/phone/app/memory.usage_in_bytes", str(GiB // 4))
    assert available_memory(**paths) == GiB // 2


def test_v2_memory_max(tmp_path):
    paths = fake(tmp_path, cgroup="0::/user.slice/app.scope\n")
    d = tmp_path / "sys/user.slice/app.scope"
    write(d / "memory.max", f"{3 * GiB}\n")
    write(d / "memory.current", f"{GiB}\n")
    write(d / "memory.stat", "anon 1\nfile 2\ninactive_file 0\n")
    write(tmp_path / "sys/user.slice/memory.max", "max\n")
    assert available_memory(**paths) == 2 * GiB


def test_v2_max_means_no_limit_and_meminfo_wins_when_smaller(tmp_path):
    paths = fake(tmp_path, meminfo_gib=1, cgroup="0::/app\n")
    write(tmp_path / "sys/app/memory.max", "max\n")
    write(tmp_path / "sys/app/memory.current", f"{GiB}\n")
    assert available_memory(**paths) == GiB
    write(tmp_path / "sys/app/memory.max", f"{8 * GiB}\n")
    assert available_memory(**paths) == GiB          # MemAvailable (1 GiB) is tighter than 7 GiB


def test_usage_above_limit_is_zero_room_and_unreadable_is_unknown(tmp_path):
    paths = fake(tmp_path, cgroup="0::/app\n")
    write(tmp_path / "sys/app/memory.max", f"{GiB}\n")
    write(tmp_path / "sys/app/memory.current", f"{2 * GiB}\n")
    assert available_memory(**paths) == 0
    assert available_memory(str(tmp_path / "none"), str(tmp_path / "none"), str(tmp_path / "none")) is None


def test_memory_limit_is_the_tightest_cgroup_limit_else_the_ram(tmp_path):
    from gemma3n_rt.planner import memory_limit
    paths = fake(tmp_path, cgroup="4:memory:/phone/app\n")
    assert memory_limit(**paths) == 24000000 * 1024          # no cgroup files: MemTotal
    write(tmp_path / "sys/memory/phone/memory.limit_in_bytes", str(3 * GiB))
    write(tmp_path / "sys/memory/phone/memory.usage_in_bytes", str(2 * GiB))
    write(tmp_path / "sys/memory/phone/app/memory.limit_in_bytes", str(4 * GiB))
    write(tmp_path / "sys/memory/phone/app/memory.usage_in_bytes", str(GiB))
    assert memory_limit(**paths) == 3 * GiB                   # the parent's, whatever the usage
