"""Wire constants shared by every profile so far (QEMU 3.0 and 7.2 agree on
all of them): the stream header, section types, MIG_CMD_*, MIG_RP_MSG_*,
RAM_SAVE_FLAG_* and the recovery handshake's marks, and the byte layout of
every wire item (``LAYOUTS`` and each message's ``payload``).  Facts §7.
Literal data only.
"""
from livemig.spec.schema import Field as F, Layout, Wire, WireConst, WireMessage

# ------------------------------------------------------------------ layouts
# Byte layouts, in wire order.  Every length the engine checks or writes
# (REQ_PAGES' 12, REQ_PAGES_ID's 13 + idlen, the multifd hello's 9) is the
# size of one of these; nothing writes it by hand.

# message payloads (MIG_CMD_* and MIG_RP_MSG_*)
_PING = Layout("PING", (F("value", "be32"),))
_ADVISE = Layout("POSTCOPY_ADVISE", (
    F("pagesize_summary", "be64", "OR of every RAMBlock's page size"),
    F("target_page_size", "be64"),
))
DISCARD_RANGE = Layout("DISCARD_RANGE", (
    F("start", "be64", "byte offset in the RAMBlock"), F("length", "be64", "bytes"),
))
_DISCARD = Layout("POSTCOPY_RAM_DISCARD", (
    F("version", "u8", "POSTCOPY_RAM_DISCARD_VERSION"),
    F("block", "str8", "RAMBlock idstr", min=1),
    F("nul", "nul", "terminates the idstr"),
    # the sender sends at most MAX_DISCARDS_PER_COMMAND; QEMU's receiver takes any number
    F("ranges", "array", min=1, item=DISCARD_RANGE),
))
_PACKAGED = Layout("PACKAGED", (F("length", "be32", "bytes of the blob that follows"),))
_BLOCK_NAME = Layout("BLOCK_NAME", (F("block", "str8", "RAMBlock idstr"),))
_RP_VALUE = Layout("RP_VALUE", (F("value", "be32"),))
_REQ_PAGES = Layout("REQ_PAGES", (
    F("start", "be64", "byte offset in the RAMBlock"), F("length", "be32", "bytes"),
))
_REQ_PAGES_ID = Layout("REQ_PAGES_ID", (
    F("start", "be64", "byte offset in the RAMBlock"), F("length", "be32", "bytes"),
    F("block", "str8", "RAMBlock idstr, no NUL on the wire", min=1),
))

LAYOUTS = (
    # framing
    Layout("STREAM_HEADER", (F("magic", "be32"), F("version", "be32"))),
    Layout("COMMAND_HEADER", (
        F("section", "u8", "QEMU_VM_COMMAND"), F("cmd", "be16", "MIG_CMD_*"),
        F("length", "be16", "payload bytes"),
    )),
    Layout("RP_HEADER", (F("type", "be16", "MIG_RP_MSG_*"), F("length", "be16"))),
    Layout("SECTION_START", (
        F("section", "u8", "QEMU_VM_SECTION_START or _FULL"), F("section_id", "be32"),
        F("idstr", "str8"), F("instance_id", "be32"), F("version_id", "be32"),
    ), "then the section's data and its footer"),
    Layout("SECTION_PART", (
        F("section", "u8", "QEMU_VM_SECTION_PART or _END"), F("section_id", "be32"),
    )),
    # after QEMU_VM_EOF: the device description dumping tools read (QEMU's
    # destination reads and skips it)
    Layout("VMDESCRIPTION", (
        F("section", "u8", "QEMU_VM_VMDESCRIPTION"),
        F("json", "str32", "the vmdesc JSON", max="LIVEMIG_MAX_SECTION_BODY"),
    )),
    Layout("SECTION_FOOTER", (F("section", "u8", "QEMU_VM_SECTION_FOOTER"),
                              F("section_id", "be32"))),
    Layout("CONFIGURATION", (
        F("section", "u8", "QEMU_VM_CONFIGURATION"),
        F("machine", "str32", "machine type", max="LIVEMIG_MAX_MACHINE_NAME"),
    ), "then subsections"),
    Layout("SUBSECTION", (
        F("section", "u8", "QEMU_VM_SUBSECTION"), F("name", "str8"), F("version_id", "be32"),
    ), "then the subsection's body"),
    Layout("CONFIG_UUID", (F("uuid", "uuid"),)),
    Layout("CONFIG_PAGE_BITS", (F("page_bits", "be32"),)),
    Layout("CONFIG_CAPABILITIES", (F("count", "be32"),), "then count x CAPABILITY"),
    Layout("CAPABILITY", (F("name", "str8"),)),
    # QEMU's globalstate section body (vmstate_globalstate: VMSTATE_UINT32
    # size, VMSTATE_BUFFER runstate[100]; facts §11: 104 bytes)
    Layout("QEMU_GLOBALSTATE_BODY", (
        F("size", "be32", "bytes of the run state name with its NUL"),
        F("runstate", "bytes100", "the run state name, NUL-padded"),
    )),
    # section bodies (livemig's globalstate and device sections)
    Layout("GLOBALSTATE_BODY", (
        F("runstate", "str32", "NUL-padded run state", max="LIVEMIG_MAX_SECTION_BODY"),
    )),
    Layout("DEVICE_BODY", (
        F("blob", "str32", "DEVICE_STATE", min="LIVEMIG_MIN_DEVICE_STATE",
          max="LIVEMIG_MAX_SECTION_BODY"),
    )),
    Layout("DEVICE_STATE", (F("cursor", "be64", "the vCPU's workload cursor"),
                            F("device", "rest", "the opaque device blob"))),
    # the RAM section
    Layout("RAM_RECORD", (F("addr_flags", "be64", "page-aligned offset | RAM_SAVE_FLAG_*"),)),
    Layout("RAM_BLOCK_ID", (F("idstr", "str8"),), "after a record without CONTINUE"),
    Layout("RAM_BLOCK_ENTRY", (F("idstr", "str8"), F("used_length", "be64")),
           "one block of the MEM_SIZE record"),
    # after a MEM_SIZE entry, when QEMU 7.2's ram_save_setup sends them
    Layout("RAM_BLOCK_PAGE_SIZE", (F("page_size", "be64", "with postcopy-ram, when the "
                                     "block's page size is not the host's"),)),
    Layout("RAM_BLOCK_ADDR", (F("addr", "be64", "mr->addr, with x-ignore-shared"),)),
    Layout("ZERO_PAGE", (F("fill", "u8"),)),
    Layout("XBZRLE_PAGE", (F("encoding", "u8", "ENCODING_FLAG_XBZRLE"),
                           F("data", "str16", "encoded delta"))),
    Layout("COMPRESSED_PAGE", (F("data", "str32", "zlib data",
                                 max="LIVEMIG_MAX_COMPRESSED_PAGE"),)),
    # postcopy recovery: after RP RECV_BITMAP, outside the framing
    Layout("RECV_BITMAP_TRAILER", (
        F("bitmap", "str64", "received bitmap, little-endian longs, size rounded up to 8"),
        F("end_mark", "be64", "RECV_BITMAP_ENDING"),
    )),
    # multifd channels (livemig's packets)
    Layout("CHANNEL_MAGIC", (F("magic", "be32"),),
           "first be32 of an accepted connection: MULTIFD_MAGIC or QEMU_VM_FILE_MAGIC"),
    Layout("MULTIFD_HELLO", (F("magic", "be32"), F("version", "be32"), F("channel", "u8"))),
    Layout("MULTIFD_PACKET_HEADER", (
        F("flags", "be32", "1: SYNC"), F("pages", "be32"), F("packet_num", "be64"),
        F("idlen", "u8", "then idstr, pages x be64 offset, pages x page"),
    )),
    DISCARD_RANGE,
)

WIRE = Wire(
    file=(
        WireConst("QEMU_VM_FILE_MAGIC", 0x5145564D, '"QEVM", be32 at stream start'),
        WireConst("QEMU_VM_FILE_VERSION", 0x00000003, "be32 after the magic"),
        WireConst("QEMU_VM_FILE_VERSION_COMPAT", 0x00000002, "obsolete v2 format"),
    ),
    sections=(
        WireConst("QEMU_VM_EOF", 0x00),
        WireConst("QEMU_VM_SECTION_START", 0x01),
        WireConst("QEMU_VM_SECTION_PART", 0x02),
        WireConst("QEMU_VM_SECTION_END", 0x03),
        WireConst("QEMU_VM_SECTION_FULL", 0x04),
        WireConst("QEMU_VM_SUBSECTION", 0x05),
        WireConst("QEMU_VM_VMDESCRIPTION", 0x06, "be32 length + JSON, after EOF"),
        WireConst("QEMU_VM_CONFIGURATION", 0x07, "be32 len + machine type, then subsections"),
        WireConst("QEMU_VM_COMMAND", 0x08, "be16 cmd, be16 len, payload"),
        WireConst("QEMU_VM_SECTION_FOOTER", 0x7E, "then be32 section_id"),
    ),
    commands=(
        WireMessage("MIG_CMD_INVALID", 0, None, "rejected", handler_checks=True),
        WireMessage("MIG_CMD_OPEN_RETURN_PATH", 1, None, "destination opens the return path"),
        WireMessage("MIG_CMD_PING", 2, _PING, "answered by PONG"),
        WireMessage("MIG_CMD_POSTCOPY_ADVISE", 3, _ADVISE, "16 bytes or 0 (dirty bitmaps only)",
                    handler_checks=True),
        WireMessage("MIG_CMD_POSTCOPY_LISTEN", 4, None, "first item of the package"),
        WireMessage("MIG_CMD_POSTCOPY_RUN", 5, None, "last item of the package"),
        WireMessage("MIG_CMD_POSTCOPY_RAM_DISCARD", 6, _DISCARD,
                    "byte ranges of one RAMBlock, at most MAX_DISCARDS_PER_COMMAND"),
        WireMessage("MIG_CMD_PACKAGED", 7, _PACKAGED, "the blob follows outside the command"),
        WireMessage("MIG_CMD_ENABLE_COLO", 8, None, "absent from mig_cmd_args: length 0"),
        WireMessage("MIG_CMD_POSTCOPY_RESUME", 9, None, "recovery handshake"),
        WireMessage("MIG_CMD_RECV_BITMAP", 10, _BLOCK_NAME, "RP RECV_BITMAP answers it"),
    ),
    return_path=(
        WireMessage("MIG_RP_MSG_INVALID", 0, None, "rejected", handler_checks=True),
        WireMessage("MIG_RP_MSG_SHUT", 1, _RP_VALUE, "0 ok, nonzero: destination error"),
        WireMessage("MIG_RP_MSG_PONG", 2, _RP_VALUE, "echo of PING"),
        WireMessage("MIG_RP_MSG_REQ_PAGES_ID", 3, _REQ_PAGES_ID,
                    "a page request naming its block (it differs from the last)"),
        WireMessage("MIG_RP_MSG_REQ_PAGES", 4, _REQ_PAGES, "same block as the last request"),
        WireMessage("MIG_RP_MSG_RECV_BITMAP", 5, _BLOCK_NAME,
                    "RECV_BITMAP_TRAILER follows outside the framing; QEMU's handler checks "
                    "the name (\"missing block name\")", handler_checks=True),
        WireMessage("MIG_RP_MSG_RESUME_ACK", 6, _RP_VALUE, "must be MIGRATION_RESUME_ACK_VALUE"),
    ),
    ram_flags=(
        WireConst("RAM_SAVE_FLAG_FULL", 0x01, "obsolete"),
        WireConst("RAM_SAVE_FLAG_ZERO", 0x02),
        WireConst("RAM_SAVE_FLAG_MEM_SIZE", 0x04),
        WireConst("RAM_SAVE_FLAG_PAGE", 0x08),
        WireConst("RAM_SAVE_FLAG_EOS", 0x10),
        WireConst("RAM_SAVE_FLAG_CONTINUE", 0x20),
        WireConst("RAM_SAVE_FLAG_XBZRLE", 0x40),
        WireConst("RAM_SAVE_FLAG_HOOK", 0x80, "RDMA"),
        WireConst("RAM_SAVE_FLAG_COMPRESS_PAGE", 0x100),
    ),
    misc=(
        WireConst("TARGET_PAGE_SIZE", 4096, "x86 target page"),
        WireConst("RAM_SAVE_FLAG_LIMIT", 0x400, "flags share the low bits of a page offset"),
        WireConst("ENCODING_FLAG_XBZRLE", 0x01, "first byte of an XBZRLE page payload"),
        WireConst("RECV_BITMAP_ENDING", 0x0123456789ABCDEF, "be64 end mark of a received bitmap"),
        WireConst("MIGRATION_RESUME_ACK_VALUE", 1, "RESUME_ACK payload"),
        WireConst("MAX_DISCARDS_PER_COMMAND", 12, "ranges per POSTCOPY_RAM_DISCARD"),
        WireConst("POSTCOPY_RAM_DISCARD_VERSION", 0),
        WireConst("MAX_RP_MESSAGE_LENGTH", 512, "return-path receive buffer"),
        # livemig's bounds on lengths a peer declares (QEMU allocates what the
        # peer asks; livemig refuses before buffering anything beyond these)
        WireConst("LIVEMIG_MAX_MACHINE_NAME", 256, "bytes of the configuration's machine type"),
        WireConst("LIVEMIG_MAX_CREATED_RAM", 16 << 30,
                  "bytes of RAM blocks a destination creates because the source declares "
                  "them (QEMU machine types)"),
        WireConst("LIVEMIG_MAX_SECTION_BODY", 16 << 20,
                  "bytes of a device or global-state section body"),
        WireConst("LIVEMIG_MIN_DEVICE_STATE", 8, "be64 vCPU cursor before the device blob"),
        WireConst("LIVEMIG_MAX_MULTIFD_PAGES", 128, "pages in one multifd packet"),
        WireConst("LIVEMIG_MAX_COMPRESSED_PAGE", 2 * 4096 + 64,
                  "bytes of one compressed page's zlib data"),
        WireConst("MULTIFD_MAGIC", 0x11223344, "first be32 of a multifd channel"),
        WireConst("MULTIFD_VERSION", 1),
        WireConst("PING_AFTER_OPEN_RETURN_PATH", 1),
        WireConst("PING_BEFORE_PACKAGE", 2),
        WireConst("PING_IN_PACKAGE", 3),
        WireConst("PING_AFTER_PACKAGE", 4),
        # QMP's JSON streamer (qobject/json-streamer.c): limits per top-level value
        WireConst("QMP_JSON_MAX_TOKEN_SIZE", 64 << 20, "bytes of all tokens of one value"),
        WireConst("QMP_JSON_MAX_TOKEN_COUNT", 2 << 20, "tokens of one value"),
        WireConst("QMP_JSON_MAX_NESTING", 1 << 10, "open braces + brackets"),
    ),
    errors=(
        ("not_a_stream", "Not a migration stream"),
        ("version_v2", "SaveVM v2 format is obsolete and don't work anymore"),
        ("version_unsupported", "Unsupported migration stream version"),
        ("configuration_missing", "Configuration section missing"),
        ("machine_mismatch", "Machine type received is '%s' and local is '%s'"),
        ("uuid_mismatch", "UUID received is %s and local is %s"),
        ("footer_read_failed", "check_section_footer: Read section footer failed: %d"),
        ("footer_missing", "Missing section footer for %s"),
        ("footer_mismatch", "Mismatched section id in footer for %s - read 0x%x expected 0x%x"),
        ("unknown_section", "Unknown savevm section or instance '%s' %d. "
                            "Make sure that your current VM setup matches your saved VM setup, "
                            "including any hotplugged devices"),
        ("unknown_section_type", "Unknown savevm section type %d"),
        ("cmd_unknown", "MIG_CMD 0x%x unknown (len 0x%x)"),
        ("cmd_bad_length", "%s received with bad length - expecting %zu, got %d"),
        ("ping_no_return_path", "CMD_PING (0x%x) received with no return path"),
        ("ram_unknown_flags", "Unknown combination of migration flags: 0x%x"),
        ("ram_unexpected_compressed", "Received an unexpected compressed page"),
        ("ram_unknown_block", "Unknown ramblock \"%s\", cannot accept migration"),
        ("ram_page_size_mismatch", "Mismatched RAM page size %s (local) %zd != %d"),
        ("ram_length_mismatch", "Length mismatch: %s: 0x%x in != 0x%x: Invalid argument"),
        ("ram_bad_offset", "Illegal RAM offset %x"),
        ("xbzrle_bad_flag", "Failed to load XBZRLE page - wrong compression!"),
        ("xbzrle_too_long", "Failed to load XBZRLE page - len overflow!"),
        ("xbzrle_decode", "Failed to load XBZRLE page - decode error!"),
        ("decompress_failed", "Failed to load compressed page"),
        ("rp_invalid", "Received invalid message 0x%04x length 0x%04x"),
        ("rp_bad_length", "Received '%s' message (0x%04x) with incorrect length %d expecting %zu"),
        ("rp_req_pages_id_length", "Req_Page_id with length %d expecting %zd"),
        ("rp_recv_bitmap_no_name", "source_return_path_thread: missing block name"),
        ("rp_malformed", "Received malformed '%s' message (0x%04x): %s"),  # livemig's own
        ("cmd_malformed", "Received malformed '%s' command (0x%x): %s"),  # livemig's own
        # livemig's own texts for the bounds above
        ("machine_name_too_long",
         "Machine type of 0x%x bytes received, at most 0x%x are accepted"),
        ("section_too_long", "Section '%s' of 0x%x bytes received, at most 0x%x are accepted"),
        ("kernel_ram_record_kind", "livemig: a RAM record with flags 0x%x in postcopy: the "
                                   "kernel memory backend places only pages and zero pages"),
        ("ram_block_too_big", "livemig: the source declares RAM block \"%s\" of 0x%x bytes, "
         "but at most 0x%x bytes of blocks this side lacks can be created"),
        ("foreign_section_no_footer", "livemig: no section footer for '%s' (id %d) within "
         "0x%x bytes: its body cannot be told from the next section"),
        # after EOF (QEMU reads the vmdesc and does not fail on its absence)
        ("vmdesc_unexpected", "Expected vmdescription section, but got %d"),
        ("vmdesc_not_json", "vmdesc is not JSON: %s"),  # livemig's own, as the rest below
        ("vmdesc_no_devices", "vmdesc has no device list"),
        ("vmdesc_mismatch", "livemig: the vmdesc describes device %d as %s, but the stream "
         "carried %s: the sections kept opaque were split wrongly"),
        ("device_state_short", "Section '%s' of %d bytes received, at least %d expected"),
        ("multifd_too_many_pages",
         "multifd packet of %u pages received, at most %u are accepted"),
        ("rp_sibling_error", "Sibling indicated error %d"),
        ("rp_misaligned", "Misaligned page request, start: 0x%x len: %d"),
        ("rp_unknown_block", "MIG_RP_MSG_REQ_PAGES has no block '%s'"),
        ("rp_request_overrun",
         "ram_save_queue_pages request overrun start=%x len=%x blocklen=%x"),
        ("cmd_recv_bitmap_length", "loadvm_handle_recv_bitmap: invalid payload length (%d)"),
        ("rp_recv_bitmap_not_recovering", "MSG_RP_RECV_BITMAP only used for recovery"),
        ("rp_bitmap_size_mismatch", "ramblock '%s' bitmap size mismatch (0x%x != 0x%x)"),
        ("rp_bitmap_end_mark", "ramblock '%s' end mark incorrect: 0x%x"),
        ("rp_resume_ack_value", "illegal resume_ack value %d"),
        ("advise_zero_with_postcopy", "RAM postcopy is enabled but have 0 byte advise"),
        ("advise_16_without_postcopy", "RAM postcopy is disabled but have 16 byte advise"),
        ("advise_bad_length", "CMD_POSTCOPY_ADVISE invalid length (%d)"),
        ("advise_page_sizes", "Postcopy needs matching RAM page sizes (s=%x d=%x)"),
        ("advise_target_page_sizes", "Postcopy needs matching target page sizes (s=%d d=%d)"),
        ("discard_bad_length", "CMD_POSTCOPY_RAM_DISCARD invalid length (%d)"),
        ("discard_bad_version", "CMD_POSTCOPY_RAM_DISCARD invalid version (%d)"),
        ("discard_bad_block_id", "CMD_POSTCOPY_RAM_DISCARD Failed to read RAMBlock ID"),
        ("discard_missing_nil", "CMD_POSTCOPY_RAM_DISCARD missing nil (%d)"),
        ("resume_illegal", "%s: illegal resume received"),
        ("packaged_bad_length", "Unreasonably large packaged state: %zu"),
        ("rp_open_failed", "Unable to open return-path for postcopy"),
        ("stream_eof", "Input/output error"),  # strerror(EIO): the stream ended early
        ("multifd_protocol", "multifd is not supported by current protocol"),
        # livemig's own: `livemig stream inspect` (engine/inspect.py), the rest below
        ("inspect_internal", "internal error: %s"),
        ("stream_ends_inside", "%s (stream ends inside %s)"),
        ("stream_ends_before", "%s (no %s: the stream ends first)"),
        ("stream_ends_short", "%s (stream ends inside %s: needs %d bytes, %d available)"),
        ("section_started_twice", "Section id %d ('%s') started twice"),
        ("sections_not_ended", "sections started and never ended: %s"),
        ("eof_in_package", "QEMU_VM_EOF inside a package at %d"),
        ("footer_missing_at_end", "Missing section footer for %s (the stream ends first)"),
        ("no_footers", "no section footers (machine types before pc-i440fx-2.4 send none): "
         "device sections are split at the sizes the vmdesc describes"),
        ("section_no_size", "Section '%s' (id %d): the stream has no section footers and the "
         "vmdesc gives no size for it: its body cannot be told from the next section"),
        ("configuration_absent", "Configuration section missing (machine types before "
         "pc-i440fx-2.9 send none)"),
        ("mem_size_overrun", "MEM_SIZE: block '%s' of 0x%x bytes exceeds the 0x%x bytes left "
         "of the declared total"),
        ("mem_size_twice", "MEM_SIZE: block '%s' declared twice"),
        ("mem_size_empty", "MEM_SIZE: block '%s' of 0 bytes"),
        ("mem_size_differs", "MEM_SIZE: a second block list differs from the first"),
        ("mem_size_page_size_unknown", "MEM_SIZE: cannot tell whether block '%s' carries its "
         "page size (POSTCOPY_ADVISE page sizes 0x%x): 0x%x follows its length"),
        ("mem_size_page_size_and_addr", "MEM_SIZE: postcopy-ram (page sizes 0x%x) with "
         "x-ignore-shared: the page size of block '%s' cannot be told from its address"),
        ("vmdesc_absent", "no vmdesc after QEMU_VM_EOF"),
        ("vmdesc_trailing", "%d bytes after the vmdesc"),
        ("vmdesc_size_mismatch", "Section '%s' instance %d: %d bytes up to its footer, the "
         "vmdesc describes %d"),
        ("channel_error", "multifd channel %d (%s): %s"),
        ("channel_overlap", "%d pages came on more than one channel with no SYNC between: "
         "the files do not tell which copy is newer; the multifd channels' copies are kept"),
    ),
    # qmp_migrate allows several channels only for these (7.2:
    # migrate_protocol_allow_multi_channels); multifd_save_setup fails otherwise
    multi_channel_protocols=("tcp", "unix", "vsock"),
    layouts=LAYOUTS,
    # vmstate_info_uint8 ... uint64 name their fields so in the vmdesc
    vmdesc_types=(("u8", "uint8"), ("be16", "uint16"), ("be32", "uint32"), ("be64", "uint64")),
)
