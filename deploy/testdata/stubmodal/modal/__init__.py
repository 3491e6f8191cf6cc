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

    # App.server's keyword arguments in modal 1.5.4 (py/modal/app.py at
    # 69519ae): a misspelled or unsupported one fails here as in Modal.
    SERVER_KWARGS = {
        "image", "env", "secrets", "gpu", "serialized", "volumes", "cpu", "memory", "ephemeral_disk",
        "target_concurrency", "min_containers", "max_containers", "buffer_containers", "scaleup_window",
        "scaledown_window", "startup_timeout", "name", "port", "unauthenticated", "h2_enabled",
        "exit_grace_period", "routing_region", "compute_region", "cloud", "nonpreemptible", "proxy", "i6pn",
        "enable_memory_snapshot", "include_source", "experimental_options",
    }

    def server(self, **kwargs):
        unknown = set(kwargs) - self.SERVER_KWARGS
        if unknown:
            raise TypeError(f"App.server() got unexpected keyword arguments {sorted(unknown)}")
        # As validate_http_server_config (py/modal/_server.py) checks.
        if not kwargs.get("routing_region"):
            raise ValueError("The `routing_region` argument must be passed.")
        if kwargs.get("startup_timeout", 30) <= 0:
            raise ValueError("The `startup_timeout` argument must be positive.")
        if not 0 <= kwargs.get("exit_grace_period", 0) <= 3600:
            raise ValueError("The `exit_grace_period` argument must not exceed 3600 seconds (1 hour).")
        _record("app.server", kwargs)

        def wrap(cls):
            # A Server needs an @modal.enter() to start its HTTP server, and
            # no constructor of its own (py/modal/_server.py).
            if "__init__" in vars(cls):
                raise TypeError("a Server class may not define __init__")
            if not any(getattr(v, "_modal_enter", False) for v in vars(cls).values()):
                raise TypeError("a Server class needs an @modal.enter() method")
            return cls

        return wrap

    def cls(self, **kwargs):
        _record("app.cls", kwargs)
        return lambda cls: cls

    def function(self, **kwargs):
        _record("app.function", kwargs)
        return lambda f: f


def enter(*args, **kwargs):
    calls.append(["modal.enter"])

    def mark(f):
        f._modal_enter = True
        return f

    return mark


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
