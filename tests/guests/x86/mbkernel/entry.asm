; Multiboot test kernel: header, 32-bit entry, GDT reload, interrupt stubs and
; the instructions that fault on purpose (nasm -f elf32).

MB_MAGIC equ 0x1badb002
MB_FLAGS equ 0x00000003         ; page-align modules, give memory info

section .note.GNU-stack noalloc noexec nowrite progbits

section .multiboot
align 4
        dd MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)

section .bss
align 16
stack:  resb 16384
stack_top:

section .text
global _start
extern kmain
_start:
        cli
        mov esp, stack_top
        push 0
        popf
        push ebx                ; Multiboot information
        push eax                ; magic
        call kmain
global halt_forever
halt_forever:
        cli
        hlt
        jmp halt_forever

; void load_gdt(const void *gdtr): lgdt, then reload CS (0x08) and data (0x10)
global load_gdt
load_gdt:
        mov eax, [esp + 4]
        lgdt [eax]
        jmp 0x08:.cs
.cs:    mov ax, 0x10
        mov ds, ax
        mov es, ax
        mov fs, ax
        mov gs, ax
        mov ss, ax
        ret

; Interrupt stubs: push a zero error code where the CPU pushes none, then the
; vector; the common part saves the registers and calls isr_handler(frame).
%macro ISR_NOERR 1
isr%1:  push 0
        push %1
        jmp isr_common
%endmacro
%macro ISR_ERR 1
isr%1:  push %1
        jmp isr_common
%endmacro

%assign v 0
%rep 48
%if v == 8 || (v >= 10 && v <= 14) || v == 17 || v == 21 || v == 29 || v == 30
        ISR_ERR v
%else
        ISR_NOERR v
%endif
%assign v v + 1
%endrep
        ISR_NOERR 128

extern isr_handler
isr_common:
        pusha
        push esp
        call isr_handler
        add esp, 4
        popa
        add esp, 8
        iret

section .rodata
global isr_table
isr_table:
%assign v 0
%rep 48
        dd isr %+ v
%assign v v + 1
%endrep
        dd isr128

section .text
; Instructions that fault on purpose. None of them touches the stack, so an
; exception handler that resumes at fault_return (eip = fault_return) returns
; to the caller with eax = 0xdead.
global fault_return
fault_return:
        mov eax, 0xdead
        ret

global trigger_pf_read           ; uint32_t trigger_pf_read(uint32_t addr)
trigger_pf_read:
        mov ecx, [esp + 4]
        mov eax, [ecx]
        ret

global trigger_pf_write          ; uint32_t trigger_pf_write(uint32_t addr)
trigger_pf_write:
        mov ecx, [esp + 4]
        mov dword [ecx], 0x12345678
        xor eax, eax
        ret

global trigger_load_ds           ; uint32_t trigger_load_ds(uint32_t selector)
trigger_load_ds:
        mov eax, [esp + 4]
        mov ds, ax
        mov ax, 0x10
        mov ds, ax
        xor eax, eax
        ret

global trigger_div0              ; uint32_t trigger_div0(uint32_t divisor)
trigger_div0:
        mov ecx, [esp + 4]
        mov eax, 1000
        xor edx, edx
        div ecx
        ret

global trigger_ud2               ; uint32_t trigger_ud2(void)
trigger_ud2:
        ud2
        xor eax, eax
        ret

global trigger_int3              ; uint32_t trigger_int3(void): a trap, resumes after
trigger_int3:
        mov eax, 3
        int3
        ret

global trigger_int80             ; uint32_t trigger_int80(uint32_t value)
trigger_int80:
        mov eax, [esp + 4]
        int 0x80
        ret

; uint32_t read_cr2(void), void write_cr3(uint32_t), void enable_paging(void)
global read_cr2
read_cr2:
        mov eax, cr2
        ret
global write_cr3
write_cr3:
        mov eax, [esp + 4]
        mov cr3, eax
        ret
global enable_paging              ; PG and WP
enable_paging:
        mov eax, cr0
        or eax, 0x80010000
        mov cr0, eax
        jmp .flush
.flush: ret
