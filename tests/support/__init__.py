"""Helpers the tests import (servers, apps, stream readers, fakes) and that test subprocesses load by module path."""
