"""Every asyncpg exception becomes one of the project's errors at storage's edge
(:func:`storage.pg.translate` / :func:`storage.pg.map_pg_errors`), with the right verdict."""

from __future__ import annotations

import inspect

import asyncpg
import pytest

from sessionvault.errors import DataRejectedError, StorageError
from storage.pg import RETRIABLE_PG_ERRORS, map_pg_errors, translate


def _asyncpg_exception_classes() -> list[type[BaseException]]:
    classes = {
        obj
        for _, obj in inspect.getmembers(asyncpg.exceptions, inspect.isclass)
        if issubclass(obj, BaseException)
    }
    assert len(classes) > 200  # the SQLSTATE classes are all there
    return sorted(classes, key=lambda c: c.__name__)


def _make(cls: type[BaseException]) -> BaseException:
    try:
        return cls("boom")
    except TypeError:
        return cls.__new__(cls)


@pytest.mark.parametrize("cls", _asyncpg_exception_classes(), ids=lambda c: c.__name__)
def test_every_asyncpg_exception_class_maps_to_a_storage_error(
    cls: type[BaseException],
) -> None:
    err = translate(_make(cls), "doing x")
    assert isinstance(err, StorageError)
    assert str(err).startswith("doing x: ")
    if issubclass(
        cls, asyncpg.exceptions.DataError | asyncpg.exceptions.IntegrityConstraintViolationError
    ):
        assert isinstance(err, DataRejectedError)
        assert not err.retriable
    elif issubclass(cls, (*RETRIABLE_PG_ERRORS, asyncpg.exceptions.TransactionRollbackError)):
        assert err.retriable
    else:
        assert not err.retriable


def test_connection_loss_is_retriable_and_a_syntax_error_is_not() -> None:
    assert translate(ConnectionResetError("reset"), "x").retriable
    assert translate(asyncpg.exceptions.DeadlockDetectedError("d"), "x").retriable
    assert not translate(asyncpg.exceptions.PostgresSyntaxError("s"), "x").retriable
    assert not translate(asyncpg.exceptions.UndefinedTableError("t"), "x").retriable


def test_map_pg_errors_translates_in_the_block_and_passes_storage_errors_through() -> None:
    with pytest.raises(DataRejectedError) as info, map_pg_errors("writing"):
        raise asyncpg.exceptions.NumericValueOutOfRangeError("too big")
    assert isinstance(info.value.__cause__, asyncpg.exceptions.NumericValueOutOfRangeError)
    mine = StorageError("already translated")
    mine.retriable = True
    with pytest.raises(StorageError) as again, map_pg_errors("writing"):
        raise mine
    assert again.value is mine
