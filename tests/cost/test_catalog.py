"""The price catalog: the instances users name, each row priced, sourced and dated; a CSV in
its place; its age; bad CSVs named by what is wrong."""

from __future__ import annotations

import datetime as dt

import pytest

import nimbleml
from nimbleml.cost import STALE_DAYS, estimate_cost, load_catalog
from nimbleml.cost.catalog import COLUMNS, gpu_class
from nimbleml.errors import ConfigError, DataError

from .conftest import serve

NAMED = {  # issue 14: the instances the project's users name
    "aws": ["g4dn.xlarge", "g5.xlarge", "p3.2xlarge", "c6i.xlarge", "c7g.xlarge", "m6i.large"],
    "gcp": ["n1-standard-4", "n2-standard-4", "g2-standard-4", "a2-highgpu-1g"],
    "azure": ["Standard_NC6s_v3", "Standard_NC4as_T4_v3", "Standard_D4s_v5"],
}
HEADER = ",".join(COLUMNS)
ROW = "c6i.xlarge,aws,us-east-1,4,8,,0.17,0.068,https://example.com/prices,{date}"


def test_built_in_catalog_covers_the_named_instances_with_sourced_dated_prices():
    cat = load_catalog()
    assert cat.clouds == ("aws", "azure", "gcp")
    assert cat.regions() == {"aws": ["us-east-1"], "gcp": ["us-central1"], "azure": ["eastus"]}
    for cloud, names in NAMED.items():
        for name in names:
            assert cat.get(name).cloud == cloud
    for i in cat.instances:
        assert i.source.startswith("https://") and i.vcpus >= 2 and i.memory_gib > 0
        assert 0 < i.spot < i.on_demand < 5, i  # type: ignore[operator]
        assert i.date <= dt.date(2026, 12, 1) and i.arch in ("x86_64", "arm64")
    assert cat.get("c7g.xlarge").arch == "arm64" and cat.get("m6i.large").on_demand == 0.096
    assert [cat.get(n).gpu_class for n in ("g4dn.xlarge", "g5.xlarge", "p3.2xlarge",
                                           "g2-standard-4", "a2-highgpu-1g")] == [
        "T4", "A10G", "V100", "L4", "A100"]  # fmt: skip
    assert cat.get("c6i.xlarge").gpus == 0 and cat.get("STANDARD_nc6s_V3").gpus == 1


@pytest.mark.parametrize(
    "name, cls",
    [("Tesla T4", "T4"), ("NVIDIA A10G", "A10G"), ("NVIDIA A10", "A10"),
     ("NVIDIA L40S", "L40S"), ("NVIDIA L4", "L4"), ("NVIDIA A100-SXM4-40GB", "A100"),
     ("Tesla V100-SXM2-16GB", "V100"), ("NVIDIA GeForce RTX 4090", None)],
)  # fmt: skip
def test_gpu_class(name, cls):
    assert gpu_class(name) == cls


def test_a_csv_replaces_the_catalog_comments_and_all(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text(f"# my prices\n{HEADER}\n{ROW.format(date='2026-11-30')}\n"
                    "big.box,oci,eu,64,256,,2.5,,https://example.com,2026-11-30\n")  # fmt: skip
    cat = load_catalog(path)
    assert [i.name for i in cat.instances] == ["c6i.xlarge", "big.box"]
    assert cat.source == str(path) and cat.clouds == ("aws", "oci")
    assert cat.get("big.box").spot is None and cat.get("big.box").arch == "x86_64"
    assert cat.age_days(dt.date(2026, 12, 1)) == 1 and cat.age_warning(dt.date(2026, 12, 1)) is None


def test_an_old_catalog_warns_with_its_age(tmp_path):
    path = tmp_path / "old.csv"
    path.write_text(f"{HEADER}\n{ROW.format(date='2025-01-15')}\n")
    today = dt.date(2026, 12, 1)
    assert load_catalog(path).age_days(today) == 685 > STALE_DAYS
    with pytest.warns(UserWarning, match="685 days old"):
        est = estimate_cost(serve_report=serve(), prices=path, today=today)
    assert est.warnings and "dated 2025-01-15" in est.warnings[0]
    assert "warning: the price catalog" in est.table() and "(685 days old)" in est.table()
    assert est.to_dict()["catalog"]["age_days"] == 685


@pytest.mark.parametrize(
    "text, words",
    [
        ("instance,cloud,vcpus\nx,aws,4\n", "lacks the column(s) region, memory_gib, accelerator"),
        (f"{HEADER}\n" + ROW.format(date="2026-11-30").replace("0.17", "cheap"),
         "row 2 (c6i.xlarge): on_demand_usd_hour must be a number > 0, got 'cheap'"),
        (f"{HEADER}\n" + ROW.format(date="2026-11-30").replace("0.17", "-1"), "must be a number > 0"),
        (f"{HEADER}\n" + ROW.format(date="30/11/2026"), "date must be YYYY-MM-DD"),
        (f"{HEADER}\n" + ROW.format(date="2026-11-30").replace(",4,", ",4.5,"), "whole number"),
        (f"{HEADER}\n", "has no rows"),
        (f"{HEADER}\n{ROW.format(date='2026-11-30')}\n{ROW.format(date='2026-11-30')}\n",
         "c6i.xlarge more than once"),
    ],
)  # fmt: skip
def test_a_bad_csv_is_named(tmp_path, text, words):
    path = tmp_path / "prices.csv"
    path.write_text(text)
    with pytest.raises(DataError, match="price catalog") as info:
        load_catalog(path)
    assert words in str(info.value)


def test_missing_catalog_unknown_cloud_and_instance():
    with pytest.raises(DataError, match="price catalog not found: nope.csv"):
        load_catalog("nope.csv")
    with pytest.raises(ConfigError, match="unknown cloud 'ibm': choose from aws, azure, gcp"):
        nimbleml.estimate_cost(serve_report=serve(), clouds="aws,ibm")
    with pytest.raises(ConfigError, match="'c9.huge' is not in the price catalog"):
        nimbleml.estimate_cost(serve_report=serve(), measured_on="c9.huge")


def test_a_csv_with_none_of_the_columns(tmp_path):
    (tmp_path / "p.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="has none of the columns a catalog needs: instance, "):
        load_catalog(tmp_path / "p.csv")
