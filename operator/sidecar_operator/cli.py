"""``sidecar-state``: the offline twin of the admission webhook, and a few helpers.

``sidecar-state inject -f deploy.yaml -b binding.yaml`` runs exactly the engine the webhook
runs, on manifests, for GitOps pipelines, for debugging ("what would the webhook do?"), and for
tests. Bad input exits with status 2 and one line that names the file, the document and the
field, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

import yaml

from sidecar_operator import __version__
from sidecar_operator.api.crd import render_crd, write_crds
from sidecar_operator.api.models import KIND, StateBinding, parse_binding
from sidecar_operator.injection import (
    Injected,
    InjectionConflict,
    InjectionDefaults,
    InvalidPod,
    UnknownBinding,
    inject_pod,
)
from sidecar_operator.injection.workloads import pod_template, replace_pod_template

EXIT_USAGE = 2
DEFAULT_NAMESPACE = "default"


class _PlainDumper(yaml.SafeDumper):
    """No ``&id001`` anchors: manifests are read by people and by GitOps diffs."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


class InputError(Exception):
    """Bad user input: printed as one line, exit status 2."""


def _read_documents(source: str, stdin: TextIO) -> Iterator[tuple[int, Any]]:
    try:
        text = stdin.read() if source == "-" else Path(source).read_text()
    except OSError as error:
        raise InputError(f"{source}: cannot read: {error.strerror}") from None
    try:
        for index, document in enumerate(yaml.safe_load_all(text), start=1):
            if document is not None:
                yield index, document
    except yaml.YAMLError as error:
        raise InputError(f"{source}: not valid YAML: {error}".replace("\n", " ")) from None


def _describe(document: Any) -> str:
    if not isinstance(document, dict):
        return "?"
    name = (document.get("metadata") or {}).get("name", "?")
    return f"{document.get('kind', '?')}/{name}"


def load_bindings(sources: Sequence[str], *, stdin: TextIO) -> list[StateBinding]:
    bindings = []
    for source in sources:
        for index, document in _read_documents(source, stdin):
            where = f"{source}: document {index} ({_describe(document)})"
            if not isinstance(document, dict) or document.get("kind") != KIND:
                raise InputError(f"{where}: not a {KIND}")
            try:
                binding = parse_binding(document)
            except ValueError as error:
                raise InputError(f"{where}: {error}") from None
            if not binding.name:
                raise InputError(f"{where}: metadata.name: a StateBinding needs a name")
            bindings.append(binding)
    return bindings


def inject_documents(
    documents: Sequence[tuple[int, Any]],
    *,
    source: str,
    bindings: Sequence[StateBinding],
    defaults: InjectionDefaults,
) -> list[Any]:
    """Inject every workload the bindings select; other documents pass through unchanged."""
    result = []
    for index, document in documents:
        template = pod_template(document) if isinstance(document, dict) else None
        if template is None:
            result.append(document)
            continue
        namespace = (document.get("metadata") or {}).get("namespace") or DEFAULT_NAMESPACE
        in_namespace = [b for b in bindings if (b.namespace or DEFAULT_NAMESPACE) == namespace]
        try:
            outcome = inject_pod(
                template, bindings=in_namespace, namespace=namespace, defaults=defaults
            )
        except (InjectionConflict, UnknownBinding, InvalidPod) as error:
            where = f"{source}: document {index} ({_describe(document)})"
            raise InputError(f"{where}: {error}") from None
        if isinstance(outcome, Injected):
            document = replace_pod_template(document, outcome.pod)
        result.append(document)
    return result


def _defaults(args: argparse.Namespace) -> InjectionDefaults:
    overrides: dict[str, Any] = {"sidecar_mode": args.sidecar_mode}
    if args.redis_image:
        overrides["redis_image"] = args.redis_image
    if args.hydrator_image:
        overrides["hydrator_image"] = args.hydrator_image
    if args.envoy_image:
        overrides["envoy_image"] = args.envoy_image
    if args.bootstrap_servers:
        overrides["bootstrap_servers"] = tuple(args.bootstrap_servers.split(","))
    if args.nats_servers:
        overrides["nats_servers"] = tuple(args.nats_servers.split(","))
    if args.max_memory:
        overrides["max_memory"] = args.max_memory
    return InjectionDefaults(**overrides)


def cmd_inject(args: argparse.Namespace, *, stdin: TextIO, stdout: TextIO) -> int:
    if args.filename == "-" and "-" in args.binding:
        raise InputError("only one of -f and -b can read standard input")
    bindings = load_bindings(args.binding, stdin=stdin)
    documents = list(_read_documents(args.filename, stdin))
    output = inject_documents(
        documents, source=args.filename, bindings=bindings, defaults=_defaults(args)
    )
    yaml.dump_all(output, stdout, Dumper=_PlainDumper, sort_keys=False, width=100)
    return 0


def cmd_crd(args: argparse.Namespace, *, stdout: TextIO) -> int:
    if args.write:
        for path in write_crds(*(Path(folder) for folder in args.write)):
            print(f"wrote {path}", file=stdout)
    else:
        stdout.write(render_crd())
    return 0


def cmd_check(args: argparse.Namespace, *, stdout: TextIO) -> int:
    try:
        from sidecar_operator import check
    except ImportError as error:  # the CLI alone installs without the Kubernetes client
        raise InputError(
            f"`check` needs the operator's dependencies ({error.name}): "
            "pip install 'sidecar-state[operator]'"
        ) from None
    import kubernetes

    try:
        facts = check.gather(namespace=args.namespace)
    except (kubernetes.config.ConfigException, kubernetes.client.exceptions.ApiException,
            OSError) as error:  # fmt: skip
        print(f"{check.FAILED} cannot read the cluster: {error}".replace("\n", " "), file=stdout)
        print("    -> check the current kubeconfig context (kubectl config current-context)",
              file=stdout)  # fmt: skip
        return 1
    scope = f"namespace {args.namespace}" if args.namespace else "all namespaces"
    print(f"sidecar-state check (CLI {__version__}, {scope})", file=stdout)
    results = check.run_checks(
        facts,
        defaults=InjectionDefaults(),
        max_staleness_seconds=args.max_staleness,
    )
    return check.report(results, out=stdout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sidecar-state",
        description="Inject sidecar-state into manifests offline, print the CRD, and check "
        "an installation.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    inject = commands.add_parser(
        "inject", help="inject the sidecars into the workloads that bindings select"
    )
    inject.add_argument("-f", "--filename", required=True, help="manifest file, or - for stdin")
    inject.add_argument(
        "-b", "--binding", action="append", required=True, help="StateBinding file (repeatable)"
    )
    inject.add_argument("--redis-image")
    inject.add_argument("--hydrator-image")
    inject.add_argument("--envoy-image", help="the interceptor's Envoy (spec.intercept)")
    inject.add_argument("--bootstrap-servers", help="default host:port list, comma-separated")
    inject.add_argument(
        "--nats-servers",
        help="default NATS server URLs (for bindings with source.nats), comma-separated",
    )
    inject.add_argument("--max-memory", help="default store size (a quantity, e.g. 64Mi)")
    inject.add_argument("--sidecar-mode", choices=["native", "containers"], default="native")

    crd = commands.add_parser("crd", help="print the StateBinding CRD generated from the models")
    crd.add_argument("--write", nargs="+", metavar="DIR", help="write it into these folders")

    check = commands.add_parser(
        "check",
        help="check the installation in the current kubeconfig's cluster",
        description="Check, like `linkerd check`, that sidecar-state is healthy: the CRD, "
        "both webhook configurations (caBundle, endpoint), the controller, namespace labels, "
        "bindings, the Pods they select and their hydrators. Prints a list of checks; each "
        "failed one says what to do. Exits 1 when any check fails.",
    )
    check.add_argument(
        "-n", "--namespace", help="check the bindings of this namespace only (default: all)"
    )
    check.add_argument(
        "--max-staleness",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="a view older than this fails the freshness check (default: 300)",
    )

    commands.add_parser("version", help="print the version")
    return parser


def run(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "inject":
            return cmd_inject(args, stdin=stdin, stdout=stdout)
        if args.command == "crd":
            return cmd_crd(args, stdout=stdout)
        if args.command == "check":
            return cmd_check(args, stdout=stdout)
        print(__version__, file=stdout)
        return 0
    except InputError as error:
        print(f"sidecar-state: error: {error}", file=stderr)
        return EXIT_USAGE
    except ValueError as error:  # e.g. a bad --max-memory
        print(f"sidecar-state: error: {error}".replace("\n", " "), file=stderr)
        return EXIT_USAGE


def main() -> NoReturn:
    sys.exit(run())


if __name__ == "__main__":
    main()
