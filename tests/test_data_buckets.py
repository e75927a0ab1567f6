"""Bucket list and bucket choice, checked against kohya's arithmetic worked by hand."""

from __future__ import annotations

from train.data import BucketManager, DatasetBlueprint, assign_bucket, make_buckets, select_bucket
from train.data.buckets import cover_size, round_min_max_to_steps

# kohya make_bucket_resolutions((512, 512), 256, 1024, 64): for each width the tallest
# height (multiple of 64, <= 1024) with w * h <= 512 * 512, plus the transposes.
KOHYA_512 = [
    (256, 832), (256, 896), (256, 960), (256, 1024),
    (320, 704), (320, 768), (384, 640), (448, 576), (512, 512), (576, 448), (640, 384),
    (704, 320), (768, 320), (832, 256), (896, 256), (960, 256), (1024, 256),
]  # fmt: skip


def test_bucket_list_matches_kohya_for_512():
    buckets = make_buckets((512, 512), 256, 1024, 64)
    assert buckets == KOHYA_512
    assert all(w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 for w, h in buckets)
    assert {(h, w) for w, h in buckets} == set(buckets)


def test_min_and_max_are_rounded_to_steps_like_kohya():
    assert round_min_max_to_steps(100, 1000, 64) == (64, 1024)
    assert round_min_max_to_steps(10, 512, 64) == (64, 512)  # never below one step


def test_nearest_aspect_ratio_is_chosen():
    assert assign_bucket((1000, 500), KOHYA_512, False, (512, 512), 64) == (704, 320)  # 2.2 beats 2.4
    assert assign_bucket((300, 400), KOHYA_512, False, (512, 512), 64) == (448, 576)
    assert assign_bucket((2000, 2000), KOHYA_512, False, (512, 512), 64) == (512, 512)
    assert assign_bucket((576, 448), KOHYA_512, False, (512, 512), 64) == (576, 448)  # exact size


def test_resized_size_covers_the_bucket():
    for size in [(1000, 500), (300, 400), (333, 777), (1, 1000)]:
        bucket, resized = select_bucket(size, KOHYA_512, False, (512, 512), 64)
        assert resized[0] >= bucket[0] and resized[1] >= bucket[1]
        assert min(resized[0] - bucket[0], resized[1] - bucket[1]) == 0  # covers, no larger than needed
    assert cover_size((128, 64), (32, 32)) == (64, 32)


def test_no_upscale_keeps_small_images_and_rounds_down():
    bucket, resized = select_bucket((300, 200), KOHYA_512, True, (512, 512), 64)
    assert bucket == (256, 192) and resized == (300, 200)


def test_no_upscale_shrinks_large_images_to_the_area():
    bucket, resized = select_bucket((2000, 1000), KOHYA_512, True, (512, 512), 64)
    assert bucket == (640, 320) and resized == (640, 320)
    assert bucket[0] * bucket[1] <= 512 * 512


def test_bucket_manager_without_bucketing_uses_the_resolution():
    blueprint = DatasetBlueprint((96, 64), 1, False, 64, 128, 1024, False, ())
    manager = BucketManager.from_blueprint(blueprint)
    assert manager.buckets == ((96, 64),)
    assert manager.select((50, 500)) == ((96, 64), (96, 960))


def test_bucket_manager_with_bucketing_uses_kohya_list():
    blueprint = DatasetBlueprint((512, 512), 1, True, 64, 256, 1024, False, ())
    assert list(BucketManager.from_blueprint(blueprint).buckets) == KOHYA_512
