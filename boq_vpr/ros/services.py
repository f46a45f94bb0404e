"""The node's map services: ``~/save_map``, ``~/set_mapping``, ``~/clear_map`` (std_srvs)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.parameter import Parameter
from std_srvs.srv import SetBool, Trigger

from ..errors import explain


class MapServices:
    """Created at configure on ``node`` (a ``VprNode``), destroyed at cleanup.

    ``pipeline``: the configured ``FramePipeline``, whose map is saved; ``map_path``: where (None: the
    map is in memory only). ``set_mapping`` goes through the node's ``mapping`` parameter,
    ``clear_map`` through the node's ``clear_map()``.
    """

    def __init__(self, node: Any, pipeline: Any, map_path: Path | None) -> None:
        self.node = node
        self.pipeline = pipeline
        self.map_path = map_path
        group = MutuallyExclusiveCallbackGroup()
        self._services = [node.create_service(Trigger, '~/save_map', self.save_map, callback_group=group),
                          node.create_service(SetBool, '~/set_mapping', self.set_mapping, callback_group=group),
                          node.create_service(Trigger, '~/clear_map', self.clear_map, callback_group=group)]

    def destroy(self) -> None:
        for srv in self._services:
            self.node.destroy_service(srv)
        self._services = []

    def _done(self, response: Any, success: bool, message: str) -> Any:
        response.success, response.message = success, message
        log = self.node.get_logger()
        (log.info if success else log.error)(message)
        return response

    def save_map(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self.map_path is None:
            response.success, response.message = False, 'map.path is empty: nowhere to save the map'
            return response
        try:
            self.pipeline.db.save(self.map_path)
        except Exception as err:  # report to the caller; the node keeps running
            return self._done(response, False, f'saving the map failed: {explain(err)}')
        return self._done(response, True, f'saved {len(self.pipeline.db)} keyframes to {self.map_path}')

    def set_mapping(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        if self.node.values['loop_closure.mode'] != 'slam':
            response.success = False
            response.message = 'loop_closure.mode is localization: the map is read-only'
            return response
        # through the parameter, so that `mapping` always says the state
        result = self.node.set_parameters([Parameter('mapping', value=bool(request.data))])[0]
        return self._done(response, result.successful,
                          f'mapping {"on" if request.data else "off"}' if result.successful else result.reason)

    def clear_map(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self.node.values['loop_closure.mode'] == 'localization':
            response.success = False
            response.message = ('loop_closure.mode is localization: the map is read-only and is not cleared '
                                '(restart the node to reset its stamps)')
            return response
        try:
            n = self.node.clear_map()
        except Exception as err:
            return self._done(response, False, f'clearing the map failed: {explain(err)}')
        return self._done(response, True, f'cleared the map ({n} keyframes removed)')
