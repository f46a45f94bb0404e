"""``boq-vpr replay BAG``: publish a bag over DDS at its recorded rate times ``--rate``.

Optionally publishes ``/clock`` (for nodes with ``use_sim_time``), renames topics
(``--remap /camera/image_raw:=/image``) and records topics while playing (``--record
/vpr_node/candidates --record /diagnostics --record-out OUT``), e.g. the outputs of the running
node, for ``boq-vpr evaluate --live OUT``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..inputs.bags import STORAGES
    parser.add_argument('bag', type=Path, help='rosbag2 directory, .db3/.mcap file or ROS 1 .bag')
    parser.add_argument('--topics', nargs='+', default=None, help='topics to publish (default: all)')
    parser.add_argument('--rate', type=float, default=1.0, help='speed factor on the recorded timing (default 1)')
    parser.add_argument('--remap', action='append', default=[], metavar='FROM:=TO', help='rename a topic, repeatable')
    parser.add_argument('--clock', action='store_true', help='publish /clock (rosgraph_msgs/Clock) with the bag time')
    parser.add_argument('--clock-hz', type=float, default=50.0, help='/clock rate between messages (default 50)')
    parser.add_argument('--qos-reliability', default='reliable', choices=('reliable', 'best_effort'),
                        help='reliability of the publishers (default reliable; matches best-effort subscribers too)')
    parser.add_argument('--qos-depth', type=int, default=10, help='publisher queue depth (default 10)')
    parser.add_argument('--domain-id', type=int, default=None, help='ROS domain id (default: $ROS_DOMAIN_ID)')
    parser.add_argument('--wait-subscribers', type=float, default=0.0,
                        help='wait up to this many seconds for a subscriber on every topic before playing')
    parser.add_argument('--start', type=float, default=0.0, help='skip this many seconds of the bag')
    parser.add_argument('--duration', type=float, default=None, help='play at most this many seconds of the bag')
    parser.add_argument('--record', action='append', default=[], metavar='TOPIC[:TYPE]',
                        help='record this topic while playing (type from the ROS graph unless given), repeatable')
    parser.add_argument('--record-out', type=Path, default=None, help='bag to write the recorded topics to')
    parser.add_argument('--record-storage', default='sqlite3', choices=[s for s in STORAGES if s != 'ros1'],
                        help='format of the recording (default sqlite3)')
    parser.add_argument('--linger', type=float, default=5.0,
                        help='keep recording up to this many seconds after the last message (default 5)')
    parser.add_argument('--quiet', type=float, default=1.5,
                        help='stop lingering once nothing was recorded for this many seconds (default 1.5)')
    parser.add_argument('--report', type=Path, default=None, help='write the replay report as JSON here')


def run(args: argparse.Namespace) -> int:
    try:
        from ..ros.replay import BagPlayer, parse_remaps
    except ImportError as err:
        raise ConfigError(f'boq-vpr replay needs rclpy ({err}): source a ROS 2 install, or pip install '
                          "'boq_vpr[ros]' on a machine without one") from None
    if args.record and args.record_out is None:
        raise ConfigError('--record needs --record-out (the bag to write)')
    domain = args.domain_id if args.domain_id is not None else (
        int(os.environ['ROS_DOMAIN_ID']) if os.environ.get('ROS_DOMAIN_ID', '').isdigit() else None)
    player = BagPlayer(args.bag, args.topics, args.rate, parse_remaps(args.remap), args.clock, args.clock_hz,
                       args.qos_reliability, args.qos_depth, domain, wait_subscribers_s=args.wait_subscribers,
                       record=args.record, record_path=args.record_out, record_storage=args.record_storage,
                       linger_s=args.linger, quiet_s=args.quiet, start_s=args.start, duration_s=args.duration)
    previous = signal.signal(signal.SIGINT, lambda *_: player.stop())
    try:
        report = player.run()
    finally:
        signal.signal(signal.SIGINT, previous)
    total = sum(report.published.values())
    print(f'published {total} messages of {args.bag} in {report.wall_s:.1f} s (bag {report.bag_s:.1f} s, '
          f'rate x{args.rate}); lateness mean {report.late_ms_mean:.1f} ms, max {report.late_ms_max:.1f} ms')
    for topic, n in report.published.items():
        print(f'  {topic}: {n} messages')
    for topic, why in report.skipped_topics.items():
        print(f'  {topic}: not published ({why})')
    if report.record_path:
        print(f'recorded -> {report.record_path}: ' + ', '.join(f'{t} {n}' for t, n in report.recorded.items()))
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report.to_dict(), indent=2) + '\n')
    return 0 if total else 1
