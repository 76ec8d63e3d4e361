; Boot sector for pyqemu-system-x86_64's boot tests (nasm -f bin).
;
; Loaded by the BIOS at 0000:7C00 with the boot drive in DL. In order:
; - waits two BIOS ticks, prints "BOOT int10" through the BIOS's int 10h
;   teletype (on serial when SeaBIOS's serial console is on, i.e. -nographic)
;   and waits two ticks more, so that the lazily flushed BIOS console output
;   and this sector's own UART writes come out in a fixed order;
; - sets COM1 up (115200 8N1, FIFO) and prints "BOOT serial" by polling LSR;
; - writes "BOOT debugcon" to the debug console port 0x402;
; - reads the disk's second sector with int 13h AH=02 (CHS) and AH=42 (LBA
;   packet) and prints a hash of each copy ("BOOT chs/lba XXXXXXXX");
; - writes that sector to the third with int 13h AH=03, reads the third back
;   with AH=42 and prints its hash ("BOOT write XXXXXXXX", the same hash);
; - prints "BOOT OK" and powers off through the PIIX4 ACPI PM1a control
;   register that SeaBIOS places at 0x604 (SLP_TYP=0, SLP_EN), then halts with
;   interrupts off if that did not stop the machine.
;
; Hash (the test recomputes it from the image): 32-bit FNV-1a, printed as 8
; upper-case hex digits.

        bits 16
        org 0x7c00

COM1    equ 0x3f8
DEBUGCON equ 0x402
BUF1    equ 0x8000
BUF2    equ 0x8200

start:
        cli
        xor ax, ax
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov sp, 0x7c00
        sti
        cld
        mov [drive], dl

        ; SeaBIOS's serial console (sercon) sends int 10h output lazily, from
        ; its timer tick: let two BIOS ticks pass so its "Booting from Hard
        ; Disk..." line is out before this sector writes to the UART itself.
        call wait_ticks

        mov si, msg_int10
.tty:   lodsb
        test al, al
        jz .tty_done
        mov ah, 0x0e
        mov bx, 0x0007
        int 0x10
        jmp .tty
.tty_done:
        call wait_ticks

        ; 16550: 115200 8N1, FIFO on, DTR/RTS/OUT2
        mov dx, COM1 + 1
        xor al, al
        out dx, al              ; IER = 0
        mov dx, COM1 + 3
        mov al, 0x80
        out dx, al              ; DLAB
        mov dx, COM1
        mov al, 1
        out dx, al              ; DLL = 1
        inc dx
        xor al, al
        out dx, al              ; DLM = 0
        mov dx, COM1 + 3
        mov al, 3
        out dx, al              ; 8N1
        dec dx
        mov al, 0xc7
        out dx, al              ; FCR
        mov dx, COM1 + 4
        mov al, 0x0b
        out dx, al              ; MCR

        mov si, msg_serial
        call ser_puts

        mov si, msg_debug
        mov dx, DEBUGCON
.dbg:   lodsb
        test al, al
        jz .dbg_done
        out dx, al
        jmp .dbg
.dbg_done:

        ; int 13h AH=02: cylinder 0, head 0, sector 2 -> BUF1
        mov ax, 0x0201
        mov bx, BUF1
        mov cx, 0x0002
        xor dh, dh
        mov dl, [drive]
        int 0x13
        jc fail_chs
        mov si, msg_chs
        call ser_puts
        mov si, BUF1
        call hash_print

        ; int 13h AH=42: LBA 1 -> BUF2
        mov ah, 0x42
        mov dl, [drive]
        mov si, dap
        int 0x13
        jc fail_lba
        mov si, msg_lba
        call ser_puts
        mov si, BUF2
        call hash_print

        ; int 13h AH=03: write BUF1 (the second sector) to the third (CHS 0/0/3),
        ; then read the third back with AH=42 into BUF2
        mov ax, 0x0301
        mov bx, BUF1
        mov cx, 0x0003
        xor dh, dh
        mov dl, [drive]
        int 0x13
        jc fail_write
        mov byte [dap + 8], 2
        mov ah, 0x42
        mov dl, [drive]
        mov si, dap
        int 0x13
        jc fail_write
        mov si, msg_write
        call ser_puts
        mov si, BUF2
        call hash_print

        mov si, msg_ok
        call ser_puts

        mov dx, 0x604
        mov ax, 0x2000
        out dx, ax
halt:   cli
        hlt
        jmp halt

fail_chs:
        mov si, msg_fail_chs
        jmp fail
fail_lba:
        mov si, msg_fail_lba
        jmp fail
fail_write:
        mov si, msg_fail_write
fail:   call ser_puts
        jmp halt

; hash 512 bytes at DS:SI, print " XXXXXXXX\r\n"
hash_print:
        mov ebx, 0x811c9dc5
        mov cx, 512
.h:     xor eax, eax
        lodsb
        xor ebx, eax
        imul ebx, ebx, 0x01000193
        loop .h
        mov cx, 8
.d:     rol ebx, 4
        mov al, bl
        and al, 0x0f
        add al, '0'
        cmp al, '9'
        jbe .p
        add al, 'A' - '0' - 10
.p:     call ser_putc
        loop .d
        mov si, crlf
        ; fall through

; print the NUL-terminated string at DS:SI on COM1
ser_puts:
        lodsb
        test al, al
        jz .r
        call ser_putc
        jmp ser_puts
.r:     ret

ser_putc:
        push dx
        push ax
        mov dx, COM1 + 5
.w:     in al, dx
        test al, 0x20
        jz .w
        pop ax
        mov dx, COM1
        out dx, al
        pop dx
        ret

; wait until the BIOS tick count (0040:006C) changed twice
wait_ticks:
        mov cx, 2
.t:     mov eax, [0x46c]
.s:     hlt
        cmp eax, [0x46c]
        je .s
        loop .t
        ret

dap:    db 0x10, 0
        dw 1                    ; sectors
        dw BUF2, 0              ; offset, segment
        dq 1                    ; LBA

msg_serial:   db "BOOT serial", 13, 10, 0
msg_int10:    db "BOOT int10", 13, 10, 0
msg_debug:    db "BOOT debugcon", 10, 0
msg_chs:      db "BOOT chs ", 0
msg_lba:      db "BOOT lba ", 0
msg_write:    db "BOOT write ", 0
msg_ok:       db "BOOT OK"
crlf:         db 13, 10, 0
msg_fail_chs: db "BOOT FAIL chs", 13, 10, 0
msg_fail_lba: db "BOOT FAIL lba", 13, 10, 0
msg_fail_write: db "BOOT FAIL write", 13, 10, 0
drive:        db 0

        times 510 - ($ - $$) db 0
        dw 0xaa55
