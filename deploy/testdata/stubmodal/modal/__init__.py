"""A stand-in for the modal package that records how a generated app uses
it, so that deploy_test.go can check the app's shape without Modal: the
decorators and their arguments, in order. It mirrors only what the
generated apps call; anything else raises AttributeError."""

calls = []


class _Chain:
    def __init__(self, name):
        self.name = name

    def entrypoint(self, args):
        calls.append(["image.entrypoint", args])
        return self

    def env(self, env):
        calls.append(["image.env", sorted(env)])
        return self


class Image:
    @staticmethod
    def from_registry(tag, secret=None, add_python=None):
        calls.append(["image.from_registry", tag, add_python])
        return _Chain(tag)


class Secret:
    @staticmethod
    def from_name(name):
        return "secret:" + name


class Volume:
    @staticmethod
    def from_name(name):
        return "volume:" + name


def _record(name, kwargs):
    kw = {k: v for k, v in kwargs.items() if k not in ("image",)}
    calls.append([name, kw])


class App:
    def __init__(self, name):
        calls.append(["App", name])

    def server(self, **kwargs):
        _record("app.server", kwargs)
        return lambda cls: cls

    def cls(self, **kwargs):
        _record("app.cls", kwargs)
        return lambda cls: cls

    def function(self, **kwargs):
        _record("app.function", kwargs)
        return lambda f: f


def enter(*args, **kwargs):
    calls.append(["modal.enter"])
    return lambda f: f


def exit(*args, **kwargs):  # noqa: A001 - modal's name
    calls.append(["modal.exit"])
    return lambda f: f


def method(*args, **kwargs):
    calls.append(["modal.method"])
    return lambda f: f


def concurrent(*args, **kwargs):
    calls.append(["modal.concurrent"])
    return lambda c: c


def web_server(*args, **kwargs):
    calls.append(["modal.web_server", kwargs])
    return lambda f: f
