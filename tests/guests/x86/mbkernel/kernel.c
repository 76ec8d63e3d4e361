/*
 * Multiboot test kernel for pyqemu-system-x86_64's boot tests (32-bit,
 * freestanding: no libc, no libgcc, so no 64-bit division).
 *
 * Every line goes to COM1 (polled) and to VGA text at 0xB8000 (rows scroll),
 * in this order:
 *   MBK hello                       the first line
 *   MBK magic/flags/mem/cmdline/loader/mmap lines from the Multiboot information
 *   MBK gdt idt pic pit paging      set-up done
 *   MBK ticks N                     IRQ0 ticks (PIT at 100 Hz) counted between
 *                                   two edges of the RTC's seconds register
 *   MBK fault <name> vec= err= cr2= off= ret=   what each handler saw; off is
 *                                   eip minus the trigger function's address
 *   MBK bench start / MBK bench done iters=N hash=H   only with "bench" or
 *                                   "bench=<millions>" on the command line
 *   MBK spin                        only with "spin" on the command line: then
 *                                   the function spin() masks the PIC and
 *                                   loops for ever
 *   MBK DONE                        the last line; then power off through the
 *                                   ACPI PM1a control register (0x604) that
 *                                   SeaBIOS sets up, or cli; hlt
 * An exception that was not asked for prints "MBK UNEXPECTED ..." and halts.
 */

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

#define COM1 0x3f8

extern void load_gdt(const void *gdtr);
extern void halt_forever(void);
extern const u32 isr_table[49];
extern void fault_return(void);
extern u32 trigger_pf_read(u32 addr);
extern u32 trigger_pf_write(u32 addr);
extern u32 trigger_load_ds(u32 selector);
extern u32 trigger_div0(u32 divisor);
extern u32 trigger_ud2(void);
extern u32 trigger_int3(void);
extern u32 trigger_int80(u32 value);
extern u32 read_cr2(void);
extern void write_cr3(u32 value);
extern void enable_paging(void);

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
    u8 v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

/* ---- output: serial and VGA text ---- */

static volatile u16 *const vga = (volatile u16 *)0xb8000;
static u32 vga_row, vga_col;

static void serial_init(void)
{
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x80);
    outb(COM1 + 0, 0x01);
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);
    outb(COM1 + 2, 0xc7);
    outb(COM1 + 4, 0x0b);
}

static void vga_clear(void)
{
    for (u32 i = 0; i < 80 * 25; i++)
        vga[i] = 0x0720;
    vga_row = vga_col = 0;
}

static void vga_putc(char c)
{
    if (c == '\n') {
        vga_col = 0;
        if (++vga_row == 25) {
            for (u32 i = 0; i < 80 * 24; i++)
                vga[i] = vga[i + 80];
            for (u32 i = 80 * 24; i < 80 * 25; i++)
                vga[i] = 0x0720;
            vga_row = 24;
        }
        return;
    }
    if (vga_col < 80)
        vga[vga_row * 80 + vga_col++] = 0x0700 | (u8)c;
}

static void putc(char c)
{
    if (c == '\n')
        putc('\r');
    while (!(inb(COM1 + 5) & 0x20))
        ;
    outb(COM1, (u8)c);
    if (c != '\r')
        vga_putc(c);
}

static void puts(const char *s)
{
    while (*s)
        putc(*s++);
}

static void put_hex(u32 v)
{
    puts("0x");
    for (int i = 28; i >= 0; i -= 4)
        putc("0123456789abcdef"[(v >> i) & 15]);
}

static void put_hex64(u32 hi, u32 lo)
{
    put_hex(hi);
    for (int i = 28; i >= 0; i -= 4)
        putc("0123456789abcdef"[(lo >> i) & 15]);
}

static void put_dec(u32 v)
{
    char buf[11];
    int i = 10;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    puts(buf + i);
}

/* ---- descriptor tables ---- */

static u32 gdt[2 * 5] __attribute__((aligned(8)));
static u32 idt[2 * 256] __attribute__((aligned(8)));
static struct __attribute__((packed)) {
    u16 limit;
    u32 base;
} gdtr, idtr;

static void set_seg(int i, u32 access, u32 flags)
{
    /* base 0, limit 0xfffff pages */
    gdt[2 * i] = 0x0000ffff;
    gdt[2 * i + 1] = (flags << 20) | (0xf << 16) | (access << 8);
}

static void setup_gdt(void)
{
    set_seg(1, 0x9a, 0xc); /* 0x08 code */
    set_seg(2, 0x92, 0xc); /* 0x10 data */
    /* limit covers 0x00..0x27: selector 0x50 is beyond it */
    gdtr.limit = sizeof(gdt) - 1;
    gdtr.base = (u32)gdt;
    load_gdt(&gdtr);
}

static void set_gate(int v, u32 handler, u32 type)
{
    idt[2 * v] = (0x08 << 16) | (handler & 0xffff);
    idt[2 * v + 1] = (handler & 0xffff0000) | (type << 8);
}

static void setup_idt(void)
{
    for (int v = 0; v < 48; v++)
        set_gate(v, isr_table[v], 0x8e);
    set_gate(3, isr_table[3], 0xee);  /* int3 allowed from any ring */
    set_gate(0x80, isr_table[48], 0xef); /* trap gate, DPL 3 */
    idtr.limit = sizeof(idt) - 1;
    idtr.base = (u32)idt;
    __asm__ volatile("lidt %0" : : "m"(idtr));
}

/* ---- PIC, PIT, RTC ---- */

static void pic_remap(void)
{
    outb(0x20, 0x11);
    outb(0xa0, 0x11);
    outb(0x21, 0x20); /* master vectors 0x20.. */
    outb(0xa1, 0x28); /* slave vectors 0x28.. */
    outb(0x21, 0x04);
    outb(0xa1, 0x02);
    outb(0x21, 0x01);
    outb(0xa1, 0x01);
    outb(0x21, 0xfe); /* only IRQ0 */
    outb(0xa1, 0xff);
}

static void pit_100hz(void)
{
    u32 divisor = 11932; /* 1193182 Hz / 100 */
    outb(0x43, 0x34);    /* channel 0, lo/hi, mode 2 */
    outb(0x40, divisor & 0xff);
    outb(0x40, divisor >> 8);
}

static u8 cmos_read(u8 reg)
{
    outb(0x70, reg);
    return inb(0x71);
}

static u8 rtc_seconds(void)
{
    while (cmos_read(0x0a) & 0x80) /* update in progress */
        ;
    return cmos_read(0x00);
}

/* ---- paging: identity map of 0..8 MiB with holes ---- */

#define RO_PAGE 0x007ff000u       /* mapped read-only */
#define HOLE_PAGE 0x007fe000u     /* PTE not present */
#define UNMAPPED_BIG 0x40000000u  /* PDE not present */

static u32 page_dir[1024] __attribute__((aligned(4096)));
static u32 page_tables[2][1024] __attribute__((aligned(4096)));

static void setup_paging(void)
{
    for (u32 t = 0; t < 2; t++) {
        for (u32 i = 0; i < 1024; i++) {
            u32 addr = (t * 1024 + i) << 12;
            page_tables[t][i] = addr | 0x3;
        }
        page_dir[t] = (u32)page_tables[t] | 0x3;
    }
    page_tables[1][(RO_PAGE >> 12) - 1024] = RO_PAGE | 0x1;
    page_tables[1][(HOLE_PAGE >> 12) - 1024] = 0;
    write_cr3((u32)page_dir);
    enable_paging();
}

/* ---- interrupts and exceptions ---- */

struct frame {
    u32 edi, esi, ebp, esp_unused, ebx, edx, ecx, eax;
    u32 vector, err, eip, cs, eflags;
};

static volatile u32 ticks;
static volatile int expect_fault;
static volatile u32 seen_vector, seen_err, seen_cr2, seen_eip;

void isr_handler(struct frame *f);
void isr_handler(struct frame *f)
{
    if (f->vector >= 0x20 && f->vector < 0x30) {
        if (f->vector == 0x20)
            ticks++;
        if (f->vector >= 0x28)
            outb(0xa0, 0x20);
        outb(0x20, 0x20);
        return;
    }
    if (f->vector == 0x80) {
        seen_vector = f->vector;
        seen_eip = f->eip;
        f->eax = f->eax * 2 + 1;
        return;
    }
    if (!expect_fault) {
        puts("MBK UNEXPECTED vec=");
        put_dec(f->vector);
        puts(" err=");
        put_hex(f->err);
        puts(" eip=");
        put_hex(f->eip);
        puts(" cr2=");
        put_hex(read_cr2());
        puts("\n");
        halt_forever();
    }
    expect_fault = 0;
    seen_vector = f->vector;
    seen_err = f->err;
    seen_cr2 = f->vector == 14 ? read_cr2() : 0;
    seen_eip = f->eip;
    if (f->vector != 3)               /* int3 is a trap: resume after it */
        f->eip = (u32)fault_return;
}

static void report(const char *name, u32 fn, u32 ret)
{
    puts("MBK fault ");
    puts(name);
    puts(" vec=");
    put_dec(seen_vector);
    puts(" err=");
    put_hex(seen_err);
    puts(" cr2=");
    put_hex(seen_cr2);
    puts(" off=");
    put_dec(seen_eip - fn);
    puts(" ret=");
    put_hex(ret);
    puts("\n");
}

#define FAULT(name, fn, call)                        \
    do {                                             \
        seen_vector = seen_err = seen_cr2 = 0xffffffff; \
        expect_fault = 1;                            \
        u32 r_ = call;                               \
        report(name, (u32)fn, r_);                   \
    } while (0)

/* ---- Multiboot information ---- */

struct mb_info {
    u32 flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
    u32 syms[4];
    u32 mmap_length, mmap_addr, drives_length, drives_addr, config_table;
    u32 boot_loader_name;
};

static const char *find_word(const char *s, const char *w)
{
    /* w as a whole word of s, optionally followed by =value: returns what follows */
    for (const char *p = s; *p; p++) {
        if (p != s && p[-1] != ' ')
            continue;
        u32 n = 0;
        while (w[n] && p[n] == w[n])
            n++;
        if (!w[n] && (p[n] == 0 || p[n] == ' ' || p[n] == '='))
            return p + n;
    }
    return 0;
}

static void show_mbi(u32 magic, const struct mb_info *mbi, const char **cmdline)
{
    puts("MBK magic=");
    put_hex(magic);
    puts(" flags=");
    put_hex(mbi->flags);
    puts("\n");
    if (mbi->flags & 1) {
        puts("MBK mem lower=");
        put_dec(mbi->mem_lower);
        puts(" upper=");
        put_dec(mbi->mem_upper);
        puts("\n");
    }
    if (mbi->flags & (1 << 2)) {
        *cmdline = (const char *)mbi->cmdline;
        puts("MBK cmdline=");
        puts(*cmdline);
        puts("\n");
    }
    if (mbi->flags & (1 << 9)) {
        puts("MBK loader=");
        puts((const char *)mbi->boot_loader_name);
        puts("\n");
    }
    if (mbi->flags & (1 << 6)) {
        u32 p = mbi->mmap_addr, end = mbi->mmap_addr + mbi->mmap_length;
        while (p < end) {
            const u32 *e = (const u32 *)p;
            puts("MBK mmap base=");
            put_hex64(e[2], e[1]);
            puts(" len=");
            put_hex64(e[4], e[3]);
            puts(" type=");
            put_dec(e[5]);
            puts("\n");
            p += e[0] + 4;
        }
    }
}

/* ---- the CPU-bound loop for the benchmark ---- */

static u32 bench(u32 iters)
{
    u32 x = 2463534242u, h = 0x811c9dc5u;
    for (u32 i = 0; i < iters; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        h = (h ^ x) * 0x01000193u;
    }
    return h;
}

/*
 * "spin" on the command line: loop here for ever (QMP/HMP tests stop the CPU
 * here). IF stays set but every PIC input is masked, so no interrupt handler
 * runs: a stop always finds EIP inside spin().
 */
static volatile u32 spin_count;
static void __attribute__((noinline, noreturn)) spin(void)
{
    outb(0x21, 0xff);
    for (;;)
        spin_count++;
}

void kmain(u32 magic, const struct mb_info *mbi);
void kmain(u32 magic, const struct mb_info *mbi)
{
    const char *cmdline = "";

    serial_init();
    vga_clear();
    puts("MBK hello\n");
    show_mbi(magic, mbi, &cmdline);

    setup_gdt();
    setup_idt();
    pic_remap();
    pit_100hz();
    setup_paging();
    puts("MBK gdt idt pic pit paging\n");

    __asm__ volatile("sti");
    u8 s = rtc_seconds();
    while (rtc_seconds() == s)
        __asm__ volatile("hlt");
    u32 t0 = ticks;
    s = rtc_seconds();
    while (rtc_seconds() == s)
        __asm__ volatile("hlt");
    u32 count = ticks - t0;
    puts("MBK ticks ");
    put_dec(count);
    puts("\n");

    FAULT("pf-read", trigger_pf_read, trigger_pf_read(UNMAPPED_BIG + 0x123));
    FAULT("pf-write", trigger_pf_write, trigger_pf_write(HOLE_PAGE + 0x10));
    FAULT("pf-readonly", trigger_pf_write, trigger_pf_write(RO_PAGE + 0x8));
    FAULT("gp-selector", trigger_load_ds, trigger_load_ds(0x50));
    FAULT("divide", trigger_div0, trigger_div0(0));
    FAULT("ud2", trigger_ud2, trigger_ud2());
    FAULT("int3", trigger_int3, trigger_int3());
    seen_vector = seen_err = seen_cr2 = 0;
    report("int80", (u32)trigger_int80, trigger_int80(20));

    const char *b = find_word(cmdline, "bench");
    if (b) {
        u32 millions = 200;
        if (*b == '=') {
            millions = 0;
            for (b++; *b >= '0' && *b <= '9'; b++)
                millions = millions * 10 + (u32)(*b - '0');
        }
        puts("MBK bench start\n");
        u32 h = bench(millions * 1000000u);
        puts("MBK bench done iters=");
        put_dec(millions * 1000000u);
        puts(" hash=");
        put_hex(h);
        puts("\n");
    }
    if (find_word(cmdline, "spin")) {
        puts("MBK spin\n");
        spin();
    }
    puts("MBK DONE\n");
    /* power off: ACPI PM1a control at 0x604 as SeaBIOS sets the PIIX4 PM up */
    __asm__ volatile("outw %0, %1" : : "a"((u16)0x2000), "Nd"((u16)0x604));
    halt_forever();
}
