"""The monitor of profile ``qemu-7.2`` beyond the migration commands: the
QAPI types ``query-qmp-schema`` shows, the commands and events livemig
serves, and what the human monitor (HMP) prints.

Recorded from QEMU 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18) by
``python -m livemig.conformance.ground_truth_monitor`` into
``tests/data/qemu72_monitor.json``; the types below were written down from
that answer (QEMU's masked names replaced by the QAPI names of
``qapi/*.json``).  Types made from the profile's own tables are not here:
see :func:`livemig.spec.qapi.qapi_schema`.
"""
from livemig.spec.qapi import HmpInfoLine as L
from livemig.spec.qapi import HmpParam as H
from livemig.spec.qapi import M, MonitorSpec, QAlternate, QCommand, QEnum, QEvent, QObject

TYPES = (
    QObject('q_empty', ()),
    QAlternate('StrOrNull', ('str', 'null')),
    QObject('BitmapMigrationNodeAlias', (M('node-name', 'str'), M('alias', 'str'), M('bitmaps', '[BitmapMigrationBitmapAlias]'))),
    QObject('BitmapMigrationBitmapAlias', (M('name', 'str'), M('alias', 'str'), M('transform', 'BitmapMigrationBitmapAliasTransform', optional=True))),
    QObject('BitmapMigrationBitmapAliasTransform', (M('persistent', 'bool', optional=True),)),
    QObject('MigrationInfo', (M('status', 'MigrationStatus', optional=True), M('ram', 'MigrationStats', optional=True), M('disk', 'MigrationStats', optional=True), M('vfio', 'VfioStats', optional=True), M('xbzrle-cache', 'XBZRLECacheStats', optional=True), M('total-time', 'int', optional=True), M('expected-downtime', 'int', optional=True), M('downtime', 'int', optional=True), M('setup-time', 'int', optional=True), M('cpu-throttle-percentage', 'int', optional=True), M('error-desc', 'str', optional=True), M('blocked-reasons', '[str]', optional=True), M('postcopy-blocktime', 'int', optional=True), M('postcopy-vcpu-blocktime', '[int]', optional=True), M('compression', 'CompressionStats', optional=True), M('socket-address', '[SocketAddress]', optional=True))),
    QObject('MigrationStats', (M('transferred', 'int'), M('remaining', 'int'), M('total', 'int'), M('duplicate', 'int'), M('skipped', 'int'), M('normal', 'int'), M('normal-bytes', 'int'), M('dirty-pages-rate', 'int'), M('mbps', 'number'), M('dirty-sync-count', 'int'), M('postcopy-requests', 'int'), M('page-size', 'int'), M('multifd-bytes', 'int'), M('pages-per-second', 'int'), M('precopy-bytes', 'int'), M('downtime-bytes', 'int'), M('postcopy-bytes', 'int'), M('dirty-sync-missed-zero-copy', 'int'))),
    QObject('VfioStats', (M('transferred', 'int'),)),
    QObject('XBZRLECacheStats', (M('cache-size', 'int'), M('bytes', 'int'), M('pages', 'int'), M('cache-miss', 'int'), M('cache-miss-rate', 'number'), M('encoding-rate', 'number'), M('overflow', 'int'))),
    QObject('CompressionStats', (M('pages', 'int'), M('busy', 'int'), M('busy-rate', 'number'), M('compressed-size', 'int'), M('compression-rate', 'number'))),
    QObject('SocketAddress', (M('type', 'SocketAddressType'),), tag='type', variants=(('inet', 'InetSocketAddress'), ('unix', 'UnixSocketAddress'), ('vsock', 'VsockSocketAddress'), ('fd', 'String'))),
    QEnum('SocketAddressType', ('inet', 'unix', 'vsock', 'fd')),
    QObject('InetSocketAddress', (M('host', 'str'), M('port', 'str'), M('numeric', 'bool', optional=True), M('to', 'int', optional=True), M('ipv4', 'bool', optional=True), M('ipv6', 'bool', optional=True), M('keep-alive', 'bool', optional=True), M('mptcp', 'bool', optional=True))),
    QObject('UnixSocketAddress', (M('path', 'str'), M('abstract', 'bool', optional=True), M('tight', 'bool', optional=True))),
    QObject('VsockSocketAddress', (M('cid', 'str'), M('port', 'str'))),
    QObject('String', (M('str', 'str'),)),
    QObject('StatusInfo', (M('running', 'bool'), M('singlestep', 'bool'), M('status', 'RunState'))),
    QEnum('RunState', ('debug', 'inmigrate', 'internal-error', 'io-error', 'paused', 'postmigrate', 'prelaunch', 'finish-migrate', 'restore-vm', 'running', 'save-vm', 'shutdown', 'suspended', 'watchdog', 'guest-panicked', 'colo')),
    QObject('VersionInfo', (M('qemu', 'VersionTriple'), M('package', 'str'))),
    QObject('VersionTriple', (M('major', 'int'), M('minor', 'int'), M('micro', 'int'))),
    QObject('NameInfo', (M('name', 'str', optional=True),)),
    QObject('q_obj_object-del-arg', (M('id', 'str'),)),
    QObject('CommandInfo', (M('name', 'str'),)),
    QObject('SchemaInfo', (M('name', 'str'), M('meta-type', 'SchemaMetaType'), M('features', '[str]', optional=True)), tag='meta-type', variants=(('builtin', 'SchemaInfoBuiltin'), ('enum', 'SchemaInfoEnum'), ('array', 'SchemaInfoArray'), ('object', 'SchemaInfoObject'), ('alternate', 'SchemaInfoAlternate'), ('command', 'SchemaInfoCommand'), ('event', 'SchemaInfoEvent'))),
    QEnum('SchemaMetaType', ('builtin', 'enum', 'array', 'object', 'alternate', 'command', 'event')),
    QObject('SchemaInfoBuiltin', (M('json-type', 'JSONType'),)),
    QEnum('JSONType', ('string', 'number', 'int', 'boolean', 'null', 'object', 'array', 'value')),
    QObject('SchemaInfoEnum', (M('members', '[SchemaInfoEnumMember]'), M('values', '[str]', features=('deprecated',)))),
    QObject('SchemaInfoEnumMember', (M('name', 'str'), M('features', '[str]', optional=True))),
    QObject('SchemaInfoArray', (M('element-type', 'str'),)),
    QObject('SchemaInfoObject', (M('members', '[SchemaInfoObjectMember]'), M('tag', 'str', optional=True), M('variants', '[SchemaInfoObjectVariant]', optional=True))),
    QObject('SchemaInfoObjectMember', (M('name', 'str'), M('type', 'str'), M('default', 'any', optional=True), M('features', '[str]', optional=True))),
    QObject('SchemaInfoObjectVariant', (M('case', 'str'), M('type', 'str'))),
    QObject('SchemaInfoAlternate', (M('members', '[SchemaInfoAlternateMember]'),)),
    QObject('SchemaInfoAlternateMember', (M('type', 'str'),)),
    QObject('SchemaInfoCommand', (M('arg-type', 'str'), M('ret-type', 'str'), M('allow-oob', 'bool', optional=True))),
    QObject('SchemaInfoEvent', (M('arg-type', 'str'),)),
    QObject('q_obj_human-monitor-command-arg', (M('command-line', 'str'), M('cpu-index', 'int', optional=True))),
    QObject('q_obj_qmp_capabilities-arg', (M('enable', '[QMPCapability]', optional=True),)),
    QEnum('QMPCapability', ('oob',)),
    QObject('q_obj_MIGRATION-arg', (M('status', 'MigrationStatus'),)),
    QObject('q_obj_MIGRATION_PASS-arg', (M('pass', 'int'),)),
    QObject('q_obj_SHUTDOWN-arg', (M('guest', 'bool'), M('reason', 'ShutdownCause'))),
    QEnum('ShutdownCause', ('none', 'host-error', 'host-qmp-quit', 'host-qmp-system-reset', 'host-signal', 'host-ui', 'guest-shutdown', 'guest-reset', 'guest-panic', 'subsystem-reset', 'snapshot-load')),
    QEnum('QAuthZListPolicy', ('deny', 'allow')),
    QEnum('QAuthZListFormat', ('exact', 'glob')),
    QEnum('QCryptoTLSCredsEndpoint', ('client', 'server')),
    QObject('QAuthZListRule', (M('match', 'str'), M('policy', 'QAuthZListPolicy'), M('format', 'QAuthZListFormat', optional=True))),
)

#: arg_type None: the argument object is made from the profile's Command
COMMANDS = (
    QCommand("migrate", None), QCommand("migrate-incoming", None),
    QCommand("migrate_cancel", None), QCommand("migrate-continue", None),
    QCommand("migrate-set-capabilities", None), QCommand("migrate-set-parameters", None),
    QCommand("query-migrate", ret_type="MigrationInfo"),
    QCommand("query-migrate-capabilities", ret_type="[MigrationCapabilityStatus]"),
    QCommand("query-migrate-parameters", ret_type="MigrationParameters"),
    QCommand("query-status", ret_type="StatusInfo"),
    QCommand("stop"), QCommand("cont"), QCommand("quit"),
    QCommand("query-version", ret_type="VersionInfo"),
    QCommand("query-name", ret_type="NameInfo"),
    QCommand("migrate-start-postcopy", None), QCommand("migrate-pause", None),
    QCommand("migrate-recover", None),
    QCommand("object-add", "ObjectOptions"), QCommand("object-del", "q_obj_object-del-arg"),
    QCommand("query-commands", ret_type="[CommandInfo]"),
    QCommand("query-qmp-schema", ret_type="[SchemaInfo]"),
    QCommand("human-monitor-command", "q_obj_human-monitor-command-arg", "str",
             features=("savevm-monitor-nodes",)),
    QCommand("qmp_capabilities", "q_obj_qmp_capabilities-arg"),
)

EVENTS = (
    QEvent("MIGRATION", "q_obj_MIGRATION-arg"), QEvent("MIGRATION_PASS", "q_obj_MIGRATION_PASS-arg"),
    QEvent("STOP"), QEvent("RESUME"), QEvent("SHUTDOWN", "q_obj_SHUTDOWN-arg"),
)

#: migration_global_dump: the migration object's properties (fixed in livemig)
GLOBALS = (("store-global-state", "on"), ("only-migratable", "off"),
           ("send-configuration", "on"), ("send-section-footer", "on"),
           ("decompress-error-check", "on"), ("clear-bitmap-shift", "18"))

#: hmp_info_migrate after the globals, in order
INFO_MIGRATE = (
    L("status", "Migration status: {}", error_status="failed"),
    L("total-time", "total time: {} ms", when="status"),
    L("expected-downtime", "expected downtime: {} ms"),
    L("downtime", "downtime: {} ms"),
    L("setup-time", "setup: {} ms"),
    L("ram.transferred", "transferred ram: {} kbytes", shift=10),
    L("ram.mbps", "throughput: {} mbps", float_digits=2),
    L("ram.remaining", "remaining ram: {} kbytes", shift=10),
    L("ram.total", "total ram: {} kbytes", shift=10),
    L("ram.duplicate", "duplicate: {} pages"),
    L("ram.skipped", "skipped: {} pages"),
    L("ram.normal", "normal: {} pages"),
    L("ram.normal-bytes", "normal bytes: {} kbytes", shift=10),
    L("ram.dirty-sync-count", "dirty sync count: {}"),
    L("ram.page-size", "page size: {} kbytes", shift=10),
    L("ram.multifd-bytes", "multifd bytes: {} kbytes", shift=10),
    L("ram.pages-per-second", "pages-per-second: {}"),
    L("ram.dirty-pages-rate", "dirty pages rate: {} pages", when="nonzero"),
    L("ram.postcopy-requests", "postcopy request count: {}", when="nonzero"),
    L("ram.precopy-bytes", "precopy ram: {} kbytes", shift=10, when="nonzero"),
    L("ram.downtime-bytes", "downtime ram: {} kbytes", shift=10, when="nonzero"),
    L("ram.postcopy-bytes", "postcopy ram: {} kbytes", shift=10, when="nonzero"),
    L("ram.dirty-sync-missed-zero-copy", "Zero-copy-send fallbacks happened: {} times",
      when="nonzero"),
    L("disk.transferred", "transferred disk: {} kbytes", shift=10),
    L("disk.remaining", "remaining disk: {} kbytes", shift=10),
    L("disk.total", "total disk: {} kbytes", shift=10),
    L("xbzrle-cache.cache-size", "cache size: {} bytes"),
    L("xbzrle-cache.bytes", "xbzrle transferred: {} kbytes", shift=10),
    L("xbzrle-cache.pages", "xbzrle pages: {} pages"),
    L("xbzrle-cache.cache-miss", "xbzrle cache miss: {} pages"),
    L("xbzrle-cache.cache-miss-rate", "xbzrle cache miss rate: {}", float_digits=2),
    L("xbzrle-cache.encoding-rate", "xbzrle encoding rate: {}", float_digits=2),
    L("xbzrle-cache.overflow", "xbzrle overflow: {}"),
    L("compression.pages", "compression pages: {} pages"),
    L("compression.busy", "compression busy: {}"),
    L("compression.busy-rate", "compression busy rate: {}", float_digits=2),
    L("compression.compressed-size", "compressed size: {}"),
    L("compression.compression-rate", "compression rate: {}", float_digits=2),
    L("cpu-throttle-percentage", "cpu throttle percentage: {}"),
    L("postcopy-blocktime", "postcopy blocktime: {}"),
    L("postcopy-vcpu-blocktime", "postcopy vcpu blocktime: {}"),
    L("socket-address", "socket address: ["),
)

#: hmp_info_migrate_parameters' order and units; hmp_migrate_set_parameter's parsing
HMP_PARAMS = (
    H("announce-initial", "size", "{} ms"), H("announce-max", "size", "{} ms"),
    H("announce-rounds", "size"), H("announce-step", "size", "{} ms"),
    H("compress-level", "uint8"), H("compress-threads", "uint8"),
    H("compress-wait-thread", "bool"), H("decompress-threads", "uint8"),
    H("throttle-trigger-threshold", "uint8"), H("cpu-throttle-initial", "uint8"),
    H("cpu-throttle-increment", "uint8"), H("cpu-throttle-tailslow", "bool"),
    H("max-cpu-throttle", "uint8"), H("tls-creds", "str", "'{}'"),
    H("tls-hostname", "str", "'{}'"), H("max-bandwidth", "size_mib", "{} bytes/second"),
    H("downtime-limit", "size", "{} ms"), H("x-checkpoint-delay", "uint32", "{} ms"),
    H("block-incremental", "bool"), H("multifd-channels", "uint8"),
    H("multifd-compression", "enum"), H("xbzrle-cache-size", "size", "{} bytes"),
    H("max-postcopy-bandwidth", "size"), H("tls-authz", "str", "'{}'"),
    H("multifd-zlib-level", "uint8", None), H("multifd-zstd-level", "uint8", None),
    H("block-bitmap-mapping", "qmp_only", None),
)

HMP_TEXTS = (
    ("error", "Error: %s"),
    ("unknown_command", "unknown command: '%s'"),
    ("string_expected", "%s: string expected"),
    ("try_help", 'Try "help %s" for more information'),
    ("expected_on_off", "Expected 'on' or 'off'"),
    ("invalid_value", "invalid parameter value: %s"),
    ("size_expected", "Parameter '%s' expects a non-negative number below 2^64\n"
                      "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, "
                      "peta-\nand exabytes, respectively."),
    ("invalid_size", "Invalid size %s"),
    ("uint_expected", "Parameter '%s' expects uint64"),
    ("uint_range", "Parameter '%s' expects %s"),
    ("bool_expected", "Parameter '%s' expects 'on' or 'off'"),
    ("enum_value", "Parameter '%s' does not accept value '%s'"),
    ("qmp_only", "The block-bitmap-mapping parameter can only be set through QMP"),
    ("detached", "terminal does not allow synchronous migration, continuing detached"),
)

MONITOR = MonitorSpec(
    version=(7, 2, 0), package="livemig", types=TYPES, commands=COMMANDS, events=EVENTS,
    arg_elements=(("migrate-set-capabilities", "capabilities", "MigrationCapabilityStatus"),),
    object_enums=(("tls-creds-x509.endpoint", "QCryptoTLSCredsEndpoint"),
                  ("tls-creds-anon.endpoint", "QCryptoTLSCredsEndpoint"),
                  ("authz-list.policy", "QAuthZListPolicy")),
    object_kinds=(("rules", "[QAuthZListRule]"),),
    globals=GLOBALS, info_migrate=INFO_MIGRATE, hmp_params=HMP_PARAMS, hmp_texts=HMP_TEXTS,
)
