"""Profiles: shipped files, extends, --set overrides and the usage errors they raise."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vqtool.errors import UsageError
from vqtool.profiles import (
    DataConfig,
    ModelConfig,
    Profile,
    TrainConfig,
    list_profiles,
    load_profile,
    profile_from_dict,
    profile_to_dict,
    profile_to_toml,
    profiles_dir,
    with_overrides,
)

SHIPPED = [
    "ema",
    "ema-kaiming",
    "fast",
    "folder",
    "fsq",
    "lowrate",
    "original",
    "photo",
    "quality",
    "rvq",
    "smoke",
]
PRIOR_SHIPPED = ["prior", "prior-coding", "prior-cpu", "prior-small"]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def usage_line(excinfo: pytest.ExceptionInfo[UsageError]) -> str:
    assert excinfo.value.exit_code == 2
    return excinfo.value.line()


def test_list_profiles_names_every_shipped_profile_with_a_description() -> None:
    listed = list_profiles()
    assert [name for name, _ in listed] == sorted(SHIPPED + PRIOR_SHIPPED)
    for name, description in listed:
        assert description.strip(), name
        assert description.count(". ") == 0, f"{name}: one sentence"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_file_opens_with_its_command(name: str) -> None:
    text = (profiles_dir() / f"{name}.toml").read_text(encoding="utf-8")
    assert text.splitlines()[0] == f"# vqtool train --profile {name}"
    assert "\ndescription = " in text


@pytest.mark.parametrize("name", PRIOR_SHIPPED)
def test_shipped_prior_file_opens_with_its_command(name: str) -> None:
    text = (profiles_dir() / f"{name}.toml").read_text(encoding="utf-8")
    assert text.splitlines()[0] == f"# vqtool prior RUN --profile {name}"
    assert "\ndescription = " in text


def test_base_profile_documents_every_key_at_its_default() -> None:
    lines = (profiles_dir() / "ema-kaiming.toml").read_text(encoding="utf-8").splitlines()
    assert load_profile("ema-kaiming") == Profile(
        "ema-kaiming", load_profile("ema-kaiming").description
    )
    for section, cls in [("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig)]:
        for f in dataclasses.fields(cls):
            index = next(i for i, line in enumerate(lines) if line.startswith(f"{f.name} = "))
            assert lines[index - 1].startswith("#"), f"{section}.{f.name} has no comment"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_round_trips_through_toml(name: str, tmp_path: Path) -> None:
    profile = load_profile(name)
    assert profile.name == name
    again = load_profile(write(tmp_path / "profile.toml", profile_to_toml(profile)))
    assert again == profile
    assert profile_from_dict(profile_to_dict(profile), "other", "test") == profile


def test_shipped_profiles_differ_from_the_base_as_documented() -> None:
    original, ema, smoke, fast = (load_profile(n) for n in ["original", "ema", "smoke", "fast"])
    assert (original.model.decay, original.model.weight_norm) == (0.0, False)
    assert original.model.codebook_init == "encoder"
    assert (ema.model.decay, ema.model.weight_norm) == (0.99, False)
    assert smoke.model.num_embeddings == 128 and smoke.train.steps == 800
    assert smoke.model.weight_norm is False  # inherited from ema through two levels
    assert not any(p.model.kaiming_init for p in (original, ema, smoke, fast))
    # Codebook health on in the seed's profiles: restarts after 300 idle steps with EMA, after
    # 10 with the codebook loss (see original.toml for why).
    assert (ema.model.dead_code_steps, load_profile("ema-kaiming").model.dead_code_steps) == (
        300,
        300,
    )
    assert original.model.dead_code_steps == 10
    assert (fast.data.batch_size, fast.train.steps, fast.train.learning_rate) == (512, 4000, 1.5e-3)
    assert fast.train.cuda_graphs and not fast.train.amsgrad and not fast.model.weight_norm
    assert fast.train.collapse_guard and fast.model.dead_code_steps > 0


def test_round_trip_keeps_awkward_strings_and_floats(tmp_path: Path) -> None:
    profile = dataclasses.replace(
        load_profile("smoke"),
        description='quotes " and \\ backslash\nnewline\ttab \x7f é',
        train=dataclasses.replace(TrainConfig(), learning_rate=1e-5, device="cuda:1"),
    )
    again = load_profile(write(tmp_path / "r.toml", profile_to_toml(profile)))
    assert again == profile


def test_extends_a_relative_path_and_takes_its_own_name(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    write(tmp_path / "base" / "parent.toml", 'extends = "smoke"\n[train]\nsteps = 7\n')
    child = write(tmp_path / "child.toml", 'extends = "base/parent.toml"\n[model]\ndecay = 0.5\n')
    profile = load_profile(child)
    assert profile.name == "child"
    assert profile.train.steps == 7
    assert profile.model.decay == 0.5
    assert profile.model.num_embeddings == 128  # from smoke, two levels up


def test_extends_cycle_is_a_usage_error(tmp_path: Path) -> None:
    write(tmp_path / "a.toml", 'extends = "b.toml"\n')
    write(tmp_path / "b.toml", 'extends = "a.toml"\n')
    with pytest.raises(UsageError) as excinfo:
        load_profile(tmp_path / "a.toml")
    line = usage_line(excinfo)
    assert "cycle" in line and "a.toml -> " in line and "b.toml" in line


def test_extends_itself_is_a_cycle(tmp_path: Path) -> None:
    write(tmp_path / "self.toml", 'extends = "self.toml"\n')
    with pytest.raises(UsageError, match="cycle"):
        load_profile(tmp_path / "self.toml")


@pytest.mark.parametrize(
    ("override", "section", "key", "expected"),
    [
        ("train.steps=1234", "train", "steps", 1234),
        ("train.learning_rate=1e-3", "train", "learning_rate", 1e-3),
        ("train.learning_rate=1", "train", "learning_rate", 1.0),
        ("model.kaiming_init=false", "model", "kaiming_init", False),
        ('train.precision="bf16"', "train", "precision", "bf16"),
        ("train.lr_schedule=cosine", "train", "lr_schedule", "cosine"),
        ("train.device=cuda:1", "train", "device", "cuda:1"),
        ("data.shuffle = false", "data", "shuffle", False),
    ],
)
def test_set_parses_toml_values_and_bare_words(
    override: str, section: str, key: str, expected: object
) -> None:
    profile = load_profile("ema", [override])
    value = getattr(getattr(profile, section), key)
    assert value == expected and type(value) is type(expected)


def test_later_set_wins_and_with_overrides_keeps_the_name() -> None:
    profile = load_profile("smoke", ["train.steps=5", "train.steps=6"])
    assert profile.train.steps == 6
    extended = with_overrides(profile, ["train.steps=900"])
    assert extended.train.steps == 900 and extended.name == "smoke"
    assert dataclasses.replace(extended, train=profile.train) == profile


def test_unknown_profile_lists_shipped_names_and_suggests() -> None:
    with pytest.raises(UsageError) as excinfo:
        load_profile("emma")
    line = usage_line(excinfo)
    assert "unknown profile 'emma'" in line
    assert ", ".join(SHIPPED) in line
    assert "did you mean 'ema'" in line


def test_missing_profile_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not found"):
        load_profile(tmp_path / "nope.toml")


def test_unknown_section_suggests(tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", "[trian]\nsteps = 3\n")
    with pytest.raises(UsageError) as excinfo:
        load_profile(path)
    line = usage_line(excinfo)
    assert "unknown section [trian]" in line and "data, model, train" in line
    assert "did you mean 'train'" in line and "p.toml" in line


def test_misspelt_key_in_file_names_allowed_keys_and_suggests(tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", 'extends = "ema"\n[train]\nlerning_rate = 0.1\n')
    with pytest.raises(UsageError) as excinfo:
        load_profile(path)
    line = usage_line(excinfo)
    assert "unknown key 'lerning_rate' in [train]" in line
    assert "allowed keys are amsgrad, checkpoint_every," in line
    assert "did you mean 'learning_rate'" in line


def test_misspelt_key_in_set_suggests() -> None:
    with pytest.raises(UsageError) as excinfo:
        load_profile("ema", ["model.num_embedings=64"])
    line = usage_line(excinfo)
    assert "unknown key 'num_embedings' in [model]" in line
    assert "--set model.num_embedings=64" in line
    assert "did you mean 'num_embeddings'" in line


def test_section_key_at_top_level_points_to_its_section(tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", "learning_rate = 0.1\n")
    with pytest.raises(UsageError) as excinfo:
        load_profile(path)
    line = usage_line(excinfo)
    assert "unknown top-level key 'learning_rate'" in line and "under [train]" in line


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.steps=true", "train.steps must be an integer >= 1, got true (bool)"),
        ("train.steps=1.5", "train.steps must be an integer >= 1, got 1.5 (float)"),
        ("model.decay=true", "model.decay must be a number >= 0 and < 1"),
        ("data.shuffle=1", "data.shuffle must be a boolean (true or false), got 1 (int)"),
        ("train.device=3", "train.device must be one of auto, cpu, cuda, cuda:N, mps, got 3"),
        ("train.learning_rate=nan", "train.learning_rate must be a number > 0, got nan"),
    ],
)
def test_wrong_type_names_the_key_and_type(override: str, expected: str) -> None:
    with pytest.raises(UsageError) as excinfo:
        load_profile("ema", [override])
    line = usage_line(excinfo)
    assert expected in line
    assert f"(--set {override})" in line


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.learning_rate=-1", "train.learning_rate must be a number > 0, got -1.0"),
        ("model.decay=1.0", "model.decay must be a number >= 0 and < 1 (0 = no EMA), got 1.0"),
        (
            "model.num_hiddens=127",
            "model.num_hiddens must be an integer that is even and >= 2, got 127",
        ),
        ("model.num_embeddings=1", "model.num_embeddings must be an integer between 2 and 65536"),
        ("model.num_embeddings=70000", "between 2 and 65536, got 70000"),
        ("train.precision=fp16", 'train.precision must be one of auto, fp32, bf16, got "fp16"'),
        ("train.device=cuda:x", "train.device must be one of auto, cpu, cuda, cuda:N, mps"),
        ("train.device=gpu", 'cuda:N, mps, got "gpu"'),
        ("model.codebook_init=random", "must be one of seed, encoder, kmeans"),
        ("train.lr_schedule=linear", "must be one of constant, cosine"),
        ("data.dataset=mnist", "data.dataset must be one of cifar10"),
        ("data.batch_size=0", "data.batch_size must be an integer >= 1, got 0"),
        ("train.eval_every=-1", "train.eval_every must be an integer >= 0"),
        ("train.lr_hold_steps=-5", "train.lr_hold_steps must be an integer >= 0"),
        ("model.commitment_cost=-0.1", "model.commitment_cost must be a number >= 0"),
        ("model.channels=[64,0]", "model.channels must be a list of integers, each >= 1"),
        ("model.channels=[8,8,8,8,8]", "at most 4 (one per halving of the sides), got [8,8,8,8,8]"),
        ("model.channels=64", "model.channels must be a list of integers"),
        ("model.activation=gelu", 'model.activation must be one of relu, silu, got "gelu"'),
        ("model.num_residual_layers=-1", "model.num_residual_layers must be an integer >= 0"),
    ],
)
def test_out_of_range_names_the_key_and_allowed_values(override: str, expected: str) -> None:
    with pytest.raises(UsageError) as excinfo:
        load_profile("ema", [override])
    assert expected in usage_line(excinfo)


def test_network_keys() -> None:
    model = load_profile("ema", ["model.channels=[32, 256]", "model.num_residual_layers=0",
                                 "model.activation=silu"]).model  # fmt: skip
    assert (model.channels, model.num_residual_layers, model.activation) == ((32, 256), 0, "silu")
    assert load_profile("ema").model.stage_channels == (64, 128)
    assert load_profile("photo").model.stage_channels == (64, 128, 128)  # factor 8


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:1", "mps"])
def test_allowed_devices(device: str) -> None:
    assert load_profile("ema", [f"train.device={device}"]).train.device == device


def test_bad_value_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.toml", 'extends = "ema"\n[model]\nnum_hiddens = 65\n')
    with pytest.raises(UsageError) as excinfo:
        load_profile(path)
    line = usage_line(excinfo)
    assert "model.num_hiddens must be an integer that is even and >= 2, got 65" in line
    assert "bad.toml" in line


def test_malformed_toml_reports_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.toml", "[train]\nsteps = 10\nseed = = 3\n")
    with pytest.raises(UsageError) as excinfo:
        load_profile(path)
    line = usage_line(excinfo)
    assert "malformed TOML" in line and "line 3" in line and "broken.toml" in line


@pytest.mark.parametrize("override", ["train.steps", "steps=3", "train.=3", "=3"])
def test_malformed_set_is_a_usage_error(override: str) -> None:
    with pytest.raises(UsageError) as excinfo:
        load_profile("ema", [override])
    line = usage_line(excinfo)
    assert f"malformed override '{override}'" in line and "section.key=value" in line


def test_set_unknown_section() -> None:
    with pytest.raises(UsageError) as excinfo:
        load_profile("ema", ["optim.lr=3"])
    assert "unknown section 'optim'" in usage_line(excinfo)


def test_profile_from_dict_validates_and_defaults() -> None:
    profile = profile_from_dict({"model": {"decay": 0}}, "mine", "test")
    assert profile.name == "mine" and profile.model.decay == 0.0
    assert isinstance(profile.model.decay, float)
    assert profile.train == TrainConfig()
    with pytest.raises(UsageError) as excinfo:
        profile_from_dict({"model": {"decay": 2}}, "mine", "somewhere")
    assert "(somewhere)" in usage_line(excinfo)


FOLDER = ["data.dataset=folder", "data.path=photos"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            [*FOLDER, "data.image_size=[31,32]"],
            "data.image_size must be two integers [H, W], each a multiple of 2 (and of "
            "model.downsample) from 2 to 4096, got [31,32] (array)",
        ),
        (
            [*FOLDER, "data.image_size=[30,32]"],
            "data.image_size 30x32 is not a multiple of model.downsample (4) on each side",
        ),
        ([*FOLDER, "data.image_size=64"], "got 64 (int)"),
        ([*FOLDER, "data.image_size=[64]"], "got [64] (array)"),
        ([*FOLDER, "data.image_size=[0,8]"], "got [0,8]"),
        ([*FOLDER, "data.image_size=[8192,8]"], "from 2 to 4096"),
        ([*FOLDER, "data.resize=crop"], "data.resize must be one of centre-crop, random-crop"),
        ([*FOLDER, "data.test_fraction=1.0"], "data.test_fraction must be a number >= 0 and < 1"),
        (["data.dataset=folder"], 'data.path is missing: dataset = "folder" needs the image'),
        (["data.image_size=[64,64]"], 'data.image_size is for dataset = "folder"; CIFAR-10'),
        (["data.path=photos"], 'data.path is for dataset = "folder"'),
    ],
)
def test_folder_keys_are_checked(overrides: list[str], expected: str) -> None:
    with pytest.raises(UsageError) as excinfo:
        load_profile("ema", overrides)
    assert expected in usage_line(excinfo)


def test_folder_profile_path_resolves_once_against_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile = load_profile("folder")
    assert profile.data.path == str(tmp_path / "photos")  # tests run in tmp_path
    assert (profile.data.image_size, profile.data.resize) == ((64, 64), "random-crop")
    (tmp_path / "run").mkdir()
    saved = write(tmp_path / "run" / "profile.toml", profile_to_toml(profile))
    monkeypatch.chdir(tmp_path / "run")
    assert load_profile(saved) == profile  # read from elsewhere, it names the same folder
    assert load_profile(saved, ["data.image_size=[48,32]"]).data.image_size == (48, 32)


@pytest.mark.parametrize("kaiming", [False, True])
def test_profiles_stored_before_weight_norm_was_a_key_keep_their_network(kaiming: bool) -> None:
    # Checkpoints written before `model.weight_norm` existed: weight norm came with kaiming_init.
    stored = profile_to_dict(load_profile("ema"))
    model = {k: v for k, v in stored["model"].items() if k != "weight_norm"}
    old = profile_from_dict({**stored, "model": {**model, "kaiming_init": kaiming}}, "old", "t")
    assert (old.model.weight_norm, old.model.kaiming_init) == (kaiming, kaiming)


@pytest.mark.parametrize(
    "override",
    ["model.levels=[8,1]", "model.levels=[8.0,8]", "model.levels=8", "model.levels=[]",
     "model.levels=[true,8]", "model.levels=[256,256,2]"],
)  # fmt: skip
def test_levels_must_be_integers_of_at_least_two(override: str) -> None:
    with pytest.raises(UsageError) as excinfo:
        load_profile("ema", ["model.quantizer=fsq", override])
    line = usage_line(excinfo)
    assert "model.levels must be a list of integers, each >= 2, whose product is at most 65536" in (
        line
    )
    assert f"(--set {override})" in line


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "model.stages=0",
            "model.stages must be an integer >= 1 and <= 64 (what a code file holds), got 0",
        ),
        (
            "model.stages=1.5",
            "model.stages must be an integer >= 1 and <= 64 (what a code file holds), got 1.5",
        ),
        ("model.quantizer=rvq", 'model.quantizer must be one of vq, fsq, got "rvq"'),
        ("model.stage_dropout=1", "model.stage_dropout must be a boolean"),
        ("model.gradient=ste", "model.gradient must be one of straight-through, rotation"),
        (
            "model.quantizer=fsq",  # over rvq's rotation
            'model.gradient = "rotation" is for quantizer = "vq"; FSQ rounds each channel',
        ),
    ],
)
def test_quantizer_keys_are_checked(override: str, expected: str) -> None:
    with pytest.raises(UsageError) as excinfo:
        load_profile("rvq", [override])
    assert expected in usage_line(excinfo)


def test_fsq_derives_num_embeddings_from_the_levels(tmp_path: Path) -> None:
    profile = load_profile("ema", ["model.quantizer=fsq", "model.levels=[8,5,5,5]"])
    assert (profile.model.levels, profile.model.num_embeddings) == ((8, 5, 5, 5), 1000)
    # A value given for it is replaced, and the resolved profile says what the model uses.
    given = load_profile("ema", ["model.quantizer=fsq", "model.num_embeddings=7"])
    assert given.model.num_embeddings == 512
    again = load_profile(write(tmp_path / "p.toml", profile_to_toml(profile)))
    assert again == profile
    assert load_profile("ema", ["model.num_embeddings=7"]).model.num_embeddings == 7  # vq: free


def test_the_rate_profiles_differ_from_ema_as_documented() -> None:
    ema, fsq, rvq = (load_profile(n) for n in ["ema", "fsq", "rvq"])
    assert (fsq.model.quantizer, fsq.model.levels, fsq.model.num_embeddings) == (
        "fsq",
        (8, 8, 8),
        512,
    )
    assert fsq.model.stages == 1 and fsq.train == ema.train
    assert (rvq.model.quantizer, rvq.model.stages, rvq.model.stage_dropout) == ("vq", 4, True)
    assert (rvq.model.gradient, rvq.train.learning_rate) == ("rotation", 1e-3)
    assert rvq.model.num_embeddings == ema.model.num_embeddings == 512
    seeds = [load_profile(n).model for n in ["original", "ema", "ema-kaiming", "smoke", "fast"]]
    assert all((m.quantizer, m.stages, m.gradient) == ("vq", 1, "straight-through") for m in seeds)
