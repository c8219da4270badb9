"""predict's image arguments: files, folders and patterns -> each image once, with a unique, safe output name."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config.typed import DataCheckError
from pipeline.inference.sources import expand_inputs


def write_images(root: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / name), np.full((8, 10, 3), 20 * i, np.uint8))


def named(inputs) -> dict[str, Path]:
    return {image.name: image.path for image in inputs}


def test_a_folder_gives_every_image_under_it_once_sorted_named_relative_to_it(tmp_path):
    write_images(tmp_path / "data", ["b.png", "site_b/tile_003.tif", "site_a/x.JPG", ".hidden/h.png", ".h.png"])
    (tmp_path / "data/notes.txt").write_text("not an image")
    inputs = expand_inputs([str(tmp_path / "data")])
    assert [i.name for i in inputs] == ["b", "site_a/x", "site_b/tile_003"]
    assert [i.path for i in inputs] == [tmp_path / "data" / n for n in ["b.png", "site_a/x.JPG", "site_b/tile_003.tif"]]


def test_files_and_glob_matches_are_named_by_their_stem_in_argument_order(tmp_path):
    write_images(tmp_path, ["one.png", "sub/two.jpg", "sub/deeper/three.bmp"])
    (tmp_path / "sub/skip.txt").write_text("not an image")
    inputs = expand_inputs([str(tmp_path / "one.png"), str(tmp_path / "sub/**/*.*")])
    assert [(i.name, i.path.name) for i in inputs] == [("one", "one.png"), ("three", "three.bmp"), ("two", "two.jpg")]


def test_a_file_named_twice_by_a_folder_a_pattern_and_itself_is_kept_once_with_its_first_name(tmp_path):
    write_images(tmp_path / "data", ["a.png", "sub/b.png"])
    inputs = expand_inputs([str(tmp_path / "data"), str(tmp_path / "data/**/*.png"),
                            str(tmp_path / "data/sub/../sub/b.png")])
    assert [(i.name, i.path.name) for i in inputs] == [("a", "a.png"), ("sub/b", "b.png")]


def test_same_stem_with_other_suffixes_get_the_suffix_and_nothing_is_dropped(tmp_path):
    write_images(tmp_path, ["a.png", "a.tif", "b.png"])
    inputs = expand_inputs([str(tmp_path)])
    assert named(inputs) == {"a_png": tmp_path / "a.png", "a_tif": tmp_path / "a.tif", "b": tmp_path / "b.png"}


def test_same_names_from_two_folders_are_told_apart_by_the_folders(tmp_path):
    write_images(tmp_path, ["site_a/x.png", "site_b/x.png", "d1/imgs/y.png", "d2/imgs/y.png"])
    inputs = expand_inputs([str(tmp_path / "site_a"), str(tmp_path / "site_b"),
                            str(tmp_path / "d1/imgs"), str(tmp_path / "d2/imgs")])
    assert named(inputs) == {"site_a/x": tmp_path / "site_a/x.png", "site_b/x": tmp_path / "site_b/x.png",
                             "d1/imgs/y": tmp_path / "d1/imgs/y.png", "d2/imgs/y": tmp_path / "d2/imgs/y.png"}


def test_a_pattern_over_folders_with_the_same_file_names_keeps_every_file(tmp_path):
    write_images(tmp_path, ["site_a/x.png", "site_a/x.tif", "site_b/x.png"])
    inputs = expand_inputs([str(tmp_path / "*/x.*")])
    assert named(inputs) == {"site_a/x_png": tmp_path / "site_a/x.png", "site_a/x_tif": tmp_path / "site_a/x.tif",
                             "site_b/x": tmp_path / "site_b/x.png"}


def test_names_differing_only_in_case_are_made_unique_for_case_insensitive_disks(tmp_path):
    write_images(tmp_path, ["x.png", "X.PNG"])
    if len(list(tmp_path.iterdir())) < 2:
        pytest.skip("the file system is case-insensitive")
    names = [i.name for i in expand_inputs([str(tmp_path)])]
    assert len({n.casefold() for n in names}) == 2 and names == ["X", "x_2"]


def test_names_never_lead_out_of_the_output_folder(tmp_path):
    write_images(tmp_path, ["...png"])  # its stem is ".."
    (name,) = [i.name for i in expand_inputs([str(tmp_path / "...png")])]
    assert ".." not in Path(name).parts and not Path(name).is_absolute()


@pytest.mark.parametrize("setup, item, message", [
    (lambda root: None, "missing/thing.png", "missing/thing.png: no such file or folder, and no file matches it"),
    (lambda root: None, "missing/*.png", r"missing/\*.png: no such file or folder, and no file matches it"),
    (lambda root: (root / "empty").mkdir(), "empty", r"empty: no image files \(.bmp, .jpeg, .jpg, .png, .tif"),
    (lambda root: (root / "notes.txt").write_text(""), "notes.txt", r"notes.txt: not an image file; expected one of"),
    (lambda root: (root / "notes.txt").write_text(""), "*.txt", r"\*.txt: no image files \(.bmp"),
    (lambda root: write_images(root, ["d1/a.png"]), "d*", r"d\*: no image files .* matches 1 folder"),
])
def test_an_argument_that_gives_no_image_is_an_error_naming_it(tmp_path, monkeypatch, setup, item, message):
    monkeypatch.chdir(tmp_path)
    setup(tmp_path)
    with pytest.raises(DataCheckError, match=message):
        expand_inputs([item])


def test_a_link_out_of_a_folder_argument_is_a_named_error(tmp_path):
    write_images(tmp_path, ["data/a.png", "secret.png"])
    (tmp_path / "data/link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(DataCheckError, match=r"data: .*link.png: resolves outside"):
        expand_inputs([str(tmp_path / "data")])
