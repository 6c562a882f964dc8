"""An evaluation report as a text table, and as a JSON file written atomically.

Both are reachable from `deat_tf.evaluation`.
"""

from deat_tf import workdir
from deat_tf.attacks import kind_of


def format_table(report):
    """The report as a text table: one row per attack, then robust accuracy and checks."""
    header = (
        "attack",
        "loss",
        "steps x runs",
        "step",
        "attacked",
        "accuracy",
        "gradients",
        "queries",
        "seconds",
    )
    rows = []
    for result in report["attacks"]:
        kind = kind_of(result["method"])
        if kind.is_clean:
            budget, step = "-", "-"
        elif not kind.takes_count:
            budget, step = "1", f"{result['step_size']:.4g}"
        else:
            unit = " queries" if kind.cost == "query_per_step" else ""
            budget = f"{result['steps']}{unit} x {result['runs']}"
            if result["target_classes"]:
                budget += f" ({result['target_classes']} targets)"
            if result["step_size"] is not None:
                step = f"{result['step_size']:.4g}"
            else:
                step = "adaptive" if kind.step_rule == "adaptive" else "-"
        rows.append(
            (
                result["name"],
                result["loss"] or "-",
                budget,
                step,
                str(result.get("attacked", result["examples"])),
                f"{100 * result['accuracy']:.2f}%",
                str(result["gradient_evaluations"]),
                str(result.get("queries", 0)),
                f"{result['seconds']:.1f}",
            )
        )
    rows.append(
        (
            "robust (all)",
            "",
            "",
            "",
            "",
            f"{100 * report['robust_accuracy']:.2f}%",
            str(report["total_gradient_evaluations"]),
            str(report.get("total_queries", 0)),
            f"{report['total_seconds']:.1f}",
        )
    )
    widths = [max(len(row[column]) for row in rows + [header]) for column in range(len(header))]

    def line(row):
        cells = [
            cell.ljust(width) if column < 4 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths))
        ]
        return "  ".join(cells).rstrip()

    cascade = report.get("cascade", False)
    lines = [
        f"epsilon={report['epsilon']:.6g}  examples={report['examples']}  seed={report['seed']}"
        f"  replicas={report['replicas']}  cascade={'on' if cascade else 'off'}",
        line(header),
        "  ".join("-" * width for width in widths),
    ]
    lines += [line(row) for row in rows[:-1]]
    lines.append("  ".join("-" * width for width in widths))
    lines.append(line(rows[-1]))
    if cascade:
        lines.append(
            "cascade: each attack ran on the examples still robust; accuracy = correct on the "
            "clean input and under every attack so far"
        )
    else:
        lines.append("no cascade: each attack ran on every example; accuracy = under that attack")
    failed = [check for check in report["checks"] if check["passed"] is False]
    passed = sum(check["passed"] is True for check in report["checks"])
    skipped = sum(check["passed"] is None for check in report["checks"])
    summary = f"sanity checks: {passed} passed, {len(failed)} flagged"
    lines.append(summary + (f", {skipped} skipped" if skipped else ""))
    lines += [f"WARNING {check['name']}: {check['message']}" for check in failed]
    return "\n".join(lines)


def write_report(report, path):
    """Writes the report as JSON atomically: a temporary file, then a rename.

    Args:
        report: The dict from `AttackSuite.run` or `evaluate`.
        path: Destination file; its directory must exist.
    """
    workdir.write_json(path, report)
