/*
 * livemig's migration-test guest: a 512-byte x86 boot sector.
 *
 * Written for livemig from the behaviour QEMU's migration tests expect of
 * their guest (shared/reference/qemu-migration-facts.md section 8):
 *
 *   - the BIOS loads it at 0x7c00 and jumps to it in 16-bit real mode;
 *   - it enables the A20 line (port 0x92, "fast A20"), loads a flat GDT and
 *     switches to 32-bit protected mode;
 *   - it writes 'A' to the first serial port (I/O port 0x3f8);
 *   - then, forever, it increments the first byte of every 4 KiB page from
 *     1 MiB up to (not including) 100 MiB, in address order, and writes 'B'
 *     after every 64 complete sweeps.
 *
 * A stopped copy of its RAM therefore holds the same first byte in every page
 * except at most one "edge" where a page is exactly one less (mod 256) than
 * the page before it: where the incrementer was when the vCPU stopped.  A
 * migration that lost a dirty page shows up as a second edge.
 *
 * Assembled with GNU as (--32) and linked at 0x7c00; see build.py.
 */

        .set SERIAL_PORT, 0x3f8
        .set START_ADDR,  0x00100000      /* 1 MiB */
        .set END_ADDR,    0x06400000      /* 100 MiB */
        .set PAGE,        0x1000
        .set SWEEPS_PER_B, 64
        .set CODE_SEL,    0x08
        .set DATA_SEL,    0x10

        .code16
        .section .text
        .globl _start
_start:
        cli
        xorw    %ax, %ax
        movw    %ax, %ds
        movw    %ax, %ss
        movw    $0x7c00, %sp

        /* A20 on through the system control port; keep bit 0 (reset) clear. */
        inb     $0x92, %al
        orb     $0x02, %al
        andb    $0xfe, %al
        outb    %al, $0x92

        lgdtl   gdt_descriptor
        movl    %cr0, %eax
        orl     $1, %eax                /* PE */
        movl    %eax, %cr0
        ljmpl   $CODE_SEL, $protected

        .code32
protected:
        movw    $DATA_SEL, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %fs
        movw    %ax, %gs
        movw    %ax, %ss
        movl    $0x7c00, %esp

        movw    $SERIAL_PORT, %dx
        movb    $'A', %al
        outb    %al, %dx

        xorl    %ecx, %ecx              /* completed sweeps since the last 'B' */
sweep:
        movl    $START_ADDR, %ebx
page:
        incb    (%ebx)
        addl    $PAGE, %ebx
        cmpl    $END_ADDR, %ebx
        jb      page

        incl    %ecx
        cmpl    $SWEEPS_PER_B, %ecx
        jb      sweep
        xorl    %ecx, %ecx
        movb    $'B', %al
        outb    %al, %dx                /* %dx still holds the serial port */
        jmp     sweep

        /* Flat 4 GiB code and data segments. */
        .p2align 3
gdt:
        .quad   0x0000000000000000      /* null descriptor */
        .quad   0x00cf9a000000ffff      /* 0x08: code, base 0, limit 4 GiB, 32-bit */
        .quad   0x00cf92000000ffff      /* 0x10: data, base 0, limit 4 GiB, writable */
gdt_end:
gdt_descriptor:
        .word   gdt_end - gdt - 1
        .long   gdt

        /* Boot signature in the last two bytes of the sector. */
        .org    510
        .byte   0x55, 0xaa
